"""What the command-line tools (`gradguard demo`, `gradguard bench`) share."""

from __future__ import annotations

import argparse


def whole_number(minimum):
    """An argparse type: an int >= minimum, with a one-line error otherwise."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse
