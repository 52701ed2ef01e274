import Logging
import PostgresClient
import ServiceLifecycle

/// Keeps a bus's one LISTEN connection up: opens it, hands it to an ``EventReceiver``, and
/// when it breaks reconnects with backoff (50 ms doubling to 5 s; reset once a connection
/// got as far as catching up). Runs until the bus stops, graceful shutdown, or cancellation;
/// then ends every subscription.
public struct EventListenerService: Service {
    let bus: EventBus

    public init(bus: EventBus) { self.bus = bus }

    public func run() async {
        let bus = self.bus
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await reconnectLoop()
            } onGracefulShutdown: {
                bus.stop()
            }
        } onCancel: {
            bus.stop()
        }
        bus.endAll()
    }

    private func reconnectLoop() async {
        var delay = Duration.milliseconds(50)
        let receiver = EventReceiver(bus: bus)
        while !bus.isStopped {
            do {
                var channels = [try SQLIdentifier(EventQueries.channel)]
                if bus.queueWaker != nil { channels.append(try SQLIdentifier(LeaseQueries.channel)) }
                if bus.wakeupBell != nil { channels.append(try SQLIdentifier(RunTimers.channel)) }
                if bus.scheduleBell != nil { channels.append(try SQLIdentifier(ScheduleStore.channel)) }
                let listener = try await PostgresListener.open(bus.configuration, channels: channels)
                guard bus.adopt(listener) else {
                    listener.stop()
                    break
                }
                listener.start(receiver)
                do {
                    try await listener.waitUntilClosed()
                } catch {
                    // A listener that got as far as catching up was a working connection.
                    if bus.isCaughtUp { delay = .milliseconds(50) }
                    throw error
                }
                if bus.isStopped { break }
                throw PostgresError(.connectionClosed, "listener ended")
            } catch {
                if bus.dropListener() { break }
                bus.countReconnect()
                bus.logger.warning("event listener lost; reconnecting", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
    }
}
