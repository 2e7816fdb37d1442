#include "parallel.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace gradguard {
namespace {

// Busy-wait step: a pause, and every 64th time a yield, so that a waiting
// thread hands its core to whoever the OS would run (torch's or BLAS's
// threads, or our own worker) instead of burning it.
inline void pause_or_yield(int polls) {
  if ((polls & 63) == 63) {
    std::this_thread::yield();
    return;
  }
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// How long an idle worker polls for the next job before sleeping. Waking a
// sleeping thread costs tens of microseconds (more in a VM), as much as a
// whole clip of thousands of small tensors; polling this long after each job
// keeps back-to-back calls (a training step's clip, stats, optimiser) fast,
// and costs nothing to a process that makes no further call.
constexpr auto kSpinBeforeSleep = std::chrono::microseconds(100);

class ThreadPool {
 public:
  explicit ThreadPool(int threads) { start(threads); }

  int threads() const { return thread_count_; }

  // All or nothing: when the system refuses a thread part-way, the workers
  // already started are stopped, the previous count is restored, and the
  // error goes to the caller (so threads() always tells the truth).
  void resize(int threads) {
    std::lock_guard<std::mutex> running(run_mutex_);
    const int previous = thread_count_;
    stop_workers();
    try {
      start(threads);
    } catch (...) {
      stop_workers();
      start(previous);
      throw;
    }
  }

  // After fork() only the forking thread exists in the child: forget the
  // workers (their std::thread objects are leaked, never destroyed) and let
  // the child's first run() start new ones.
  void reset_after_fork() {
    new (&run_mutex_) std::mutex();
    new (&sleep_mutex_) std::mutex();
    new (&wake_) std::condition_variable();
    workers_ = new std::vector<std::thread>();
    sleeping_.store(0);
    active_.store(0);
    open_.store(false);
    restart_needed_ = true;
  }

  void run(int64_t tasks, const std::function<void(int64_t)>& body) {
    std::unique_lock<std::mutex> running(run_mutex_, std::try_to_lock);
    if (running.owns_lock() && restart_needed_) start(thread_count_);
    if (!running.owns_lock() || workers_->empty() || tasks == 1) {
      for (int64_t task = 0; task < tasks; ++task) body(task);
      return;
    }
    body_ = &body;
    error_ = nullptr;
    // Participant p owns tasks [tasks * p / n, tasks * (p + 1) / n) and walks
    // them in order, so each thread streams through one contiguous stretch of
    // memory (what the hardware prefetchers need); a participant that runs
    // out takes tasks from the others' cursors.
    const int participants = static_cast<int>(workers_->size()) + 1;
    participants_ = participants;
    for (int participant = 0; participant < participants; ++participant) {
      cursors_[participant].next.store(tasks * participant / participants, std::memory_order_relaxed);
      cursors_[participant].end = tasks * (participant + 1) / participants;
    }
    open_.store(true, std::memory_order_seq_cst);
    generation_.fetch_add(1, std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      wake_.notify_all();
    }
    work(0);
    // Every task is claimed. Close the job and wait only for the workers that
    // joined it: a worker the OS has not scheduled yet (other libraries'
    // threads may hold the cores) must not keep the caller waiting.
    open_.store(false, std::memory_order_seq_cst);
    for (int polls = 0; active_.load(std::memory_order_seq_cst) > 0; ++polls) pause_or_yield(polls);
    body_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void start(int threads) {
    thread_count_ = threads < 1 ? 1 : threads;
    stopping_.store(false);
    restart_needed_ = false;
    if (workers_ == nullptr) workers_ = new std::vector<std::thread>();
    // The worker starts from the current generation, read here under the run
    // lock, so a run() that begins before the thread is scheduled is not missed.
    const uint64_t current = generation_.load();
    cursors_.reset(new Cursor[thread_count_]);
    for (int index = 1; index < thread_count_; ++index)
      workers_->emplace_back([this, current, index] { worker_loop(current, index); });
  }

  void stop_workers() {
    stopping_.store(true, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      wake_.notify_all();
    }
    for (auto& worker : *workers_) worker.join();
    workers_->clear();
  }

  void work(int participant) {
    for (int offset = 0; offset < participants_; ++offset) {
      Cursor& cursor = cursors_[(participant + offset) % participants_];
      for (;;) {
        const int64_t task = cursor.next.fetch_add(1, std::memory_order_relaxed);
        if (task >= cursor.end) break;
        try {
          (*body_)(task);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex_);
          if (!error_) error_ = std::current_exception();
        }
      }
    }
  }

  // Waits until the generation moves past `seen`: polls first, then sleeps.
  uint64_t wait_for_job(uint64_t seen) {
    const auto deadline = std::chrono::steady_clock::now() + kSpinBeforeSleep;
    for (int polls = 0;; ++polls) {
      const uint64_t now = generation_.load(std::memory_order_acquire);
      if (now != seen) return now;
      pause_or_yield(polls);
      if ((polls & 255) == 255 && std::chrono::steady_clock::now() > deadline) break;
    }
    std::unique_lock<std::mutex> lock(sleep_mutex_);
    sleeping_.fetch_add(1, std::memory_order_acq_rel);
    wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    sleeping_.fetch_sub(1, std::memory_order_acq_rel);
    return generation_.load(std::memory_order_acquire);
  }

  void worker_loop(uint64_t seen, int participant) {
    for (;;) {
      seen = wait_for_job(seen);
      if (stopping_.load(std::memory_order_acquire)) return;
      // Join only a job that is still open (seq_cst on both sides: if this
      // load sees it open, the caller's later wait sees this increment).
      active_.fetch_add(1, std::memory_order_seq_cst);
      if (open_.load(std::memory_order_seq_cst)) work(participant);
      active_.fetch_sub(1, std::memory_order_seq_cst);
    }
  }

  std::mutex run_mutex_;    // one run() at a time; held by resize()
  std::mutex sleep_mutex_;  // pairs with wake_ for sleeping workers
  std::mutex error_mutex_;
  std::condition_variable wake_;
  std::vector<std::thread>* workers_ = nullptr;
  int thread_count_ = 1;
  bool restart_needed_ = false;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> sleeping_{0};
  std::atomic<int> active_{0};     // workers inside the current job
  std::atomic<bool> open_{false};  // whether workers may still join it
  // The job: written by run() before the generation is published (release),
  // read by workers after they observe it (acquire).
  struct alignas(64) Cursor {  // one cache line each: no false sharing
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };
  const std::function<void(int64_t)>* body_ = nullptr;
  std::unique_ptr<Cursor[]> cursors_;
  int participants_ = 1;
  std::exception_ptr error_;
};

ThreadPool& pool() {
  static ThreadPool* instance = [] {
    auto* created = new ThreadPool(usable_cores());
#if defined(__linux__)
    pthread_atfork(nullptr, nullptr, [] { pool().reset_after_fork(); });
#endif
    return created;
  }();
  return *instance;
}

}  // namespace

int usable_cores() {
#if defined(__linux__)
  cpu_set_t cpus;
  if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0) {
    const int count = CPU_COUNT(&cpus);
    if (count > 0) return count;
  }
#endif
  const unsigned int hardware = std::thread::hardware_concurrency();
  return hardware == 0 ? 1 : static_cast<int>(hardware);
}

int num_threads() { return pool().threads(); }

void set_num_threads(int count) { pool().resize(count < 1 ? 1 : count); }

void parallel_for(int64_t tasks, const std::function<void(int64_t)>& body) {
  if (tasks <= 0) return;
  pool().run(tasks, body);
}

}  // namespace gradguard
