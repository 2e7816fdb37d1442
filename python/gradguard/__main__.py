"""`python -m gradguard COMMAND` (also the `gradguard` console script)."""

import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    commands = {
        "demo": "train deep networks with and without each remedy, and measure their gradients",
        "bench": "time gradguard against NumPy and torch on the standard workloads",
        "config": "print the SIMD target, threads and build",
    }
    if not argv or argv[0] not in commands:
        print("usage: python -m gradguard {" + ",".join(commands) + "} [options]\n")
        for name, text in commands.items():
            print(f"  {name:<8}{text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "demo":
        from .demo import main as demo

        return demo(argv[1:])
    if argv[0] == "bench":
        from .bench import main as bench

        return bench(argv[1:])
    from .config import show_config

    show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
