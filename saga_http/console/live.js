// Live updates by polling, with no load while the tab is hidden.
//
// A page gets a PageContext: its pollers and in-flight requests end when the page is left.
// A poller runs its refresh, waits `intervalMs`, and runs it again; while document.hidden it
// schedules nothing, and it refreshes at once when the tab is shown again.

export class Poller {
  constructor(refresh, intervalMs) {
    this.refresh = refresh;
    this.intervalMs = intervalMs;
    this.timer = null;
    this.running = false;
    this.stopped = true;
    this.onVisibility = () => {
      if (document.hidden) this.clearTimer();
      else this.kick();
    };
  }

  start() {
    this.stopped = false;
    document.addEventListener("visibilitychange", this.onVisibility);
    this.kick();
    return this;
  }

  stop() {
    this.stopped = true;
    this.clearTimer();
    document.removeEventListener("visibilitychange", this.onVisibility);
  }

  /** Refresh now (unless hidden, stopped or already refreshing), then keep the rhythm. */
  kick() {
    if (this.stopped || this.running || document.hidden) return;
    this.clearTimer();
    this.tick();
  }

  clearTimer() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  async tick() {
    this.timer = null;
    this.running = true;
    let again = true;
    try {
      again = (await this.refresh()) !== false; // a refresh returns false when done for good
    } catch (error) {
      if (error?.name !== "AbortError") console.warn("refresh failed", error);
    } finally {
      this.running = false;
    }
    if (again && !this.stopped && !document.hidden) {
      this.timer = setTimeout(() => this.tick(), this.intervalMs);
    } else if (!again) {
      this.stop();
    }
  }
}

/** What a page owns while it is shown: an abort signal for its requests, and its pollers. */
export class PageContext {
  constructor() {
    this.controller = new AbortController();
    this.pollers = [];
  }

  get signal() {
    return this.controller.signal;
  }

  get closed() {
    return this.controller.signal.aborted;
  }

  poll(refresh, intervalMs) {
    const poller = new Poller(refresh, intervalMs);
    this.pollers.push(poller);
    return poller.start();
  }

  close() {
    for (const poller of this.pollers) poller.stop();
    this.controller.abort();
  }
}
