import NIOConcurrencyHelpers

/// Tasks suspended until some locked state lets them go on, in the order they came, each
/// woken by whoever changes that state (`OutputGate`, `WalkTurns`). A waiter leaves the queue
/// when its task is cancelled.
struct WaitQueue: Sendable {
    private var waiting: [(id: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
    private var nextID: UInt64 = 0

    var isEmpty: Bool { waiting.isEmpty }

    /// The first waiter, out of the queue, to resume once the lock is released.
    mutating func removeFirst() -> CheckedContinuation<Void, Never>? {
        waiting.isEmpty ? nil : waiting.removeFirst().continuation
    }

    /// Every waiter, out of the queue, to resume once the lock is released.
    mutating func removeAll() -> [CheckedContinuation<Void, Never>] {
        defer { waiting.removeAll() }
        return waiting.map(\.continuation)
    }

    /// Suspends the calling task unless `proceed` (run under the lock, and told whether the
    /// task is cancelled) says it may go on at once. A waiter cancelled while queued runs
    /// `onCancel` under the lock and goes on.
    static func wait<State: Sendable>(in box: NIOLockedValueBox<State>, queue: WritableKeyPath<State, WaitQueue> & Sendable,
                            unless proceed: (inout State, _ cancelled: Bool) -> Bool,
                            onCancel: @escaping @Sendable (inout State) -> Void = { _ in }) async {
        let id = box.withLockedValue { s -> UInt64 in
            s[keyPath: queue].nextID += 1
            return s[keyPath: queue].nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = box.withLockedValue { s -> Bool in
                    if proceed(&s, Task.isCancelled) { return true }
                    s[keyPath: queue].waiting.append((id, continuation))
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let waiter = box.withLockedValue { s -> CheckedContinuation<Void, Never>? in
                guard let index = s[keyPath: queue].waiting.firstIndex(where: { $0.id == id }) else { return nil }
                onCancel(&s)
                return s[keyPath: queue].waiting.remove(at: index).continuation
            }
            waiter?.resume()
        }
    }
}
