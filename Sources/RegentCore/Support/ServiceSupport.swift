import ServiceLifecycle

/// Runs `operation`; if graceful shutdown is triggered first, runs `onShutdown` as a
/// sibling task (structured: it is awaited), which must make `operation` return. Outside a
/// service group it just runs `operation`.
func runUntilGracefulShutdown(
    isolation: isolated (any Actor)? = #isolation,
    _ operation: () async -> Void,
    onShutdown: @escaping @Sendable () async -> Void
) async {
    await withTaskGroup(of: Void.self) { group in
        group.addTask {
            do { try await gracefulShutdown() } catch { return }  // cancelled: the operation ended on its own
            await onShutdown()
        }
        await operation()
        group.cancelAll()
    }
}

/// Runs a service with a preference for `executor` (the node's leadership thread), so that
/// a saturated cooperative pool cannot delay it; its nonisolated work and its default actors
/// then run there too.
struct OnExecutor<Wrapped: Service>: Service {
    let service: Wrapped
    let executor: DedicatedExecutor

    func run() async throws {
        try await withTaskExecutorPreference(executor) { try await service.run() }
    }
}
