import CoreMetrics
import Logging
import Synchronization
import PostgresClient

/// The bus's receiving side, run by the listener thread: parse each notification, read
/// truncated bodies, put events in id order (``EventSequencer``), hand them to every
/// subscription; after each (re)connect, catch up; on ticks, give up gaps and settle them
/// (``GapLedger``). An event reaches a parked subscriber in one hop from the socket.
struct EventReceiver: PostgresListenerHandler {
    let bus: EventBus
    var tickInterval: Duration? { .milliseconds(25) }

    private func reader(_ session: ListenerSession) -> EventCatchUpReader {
        let bus = self.bus
        return EventCatchUpReader(session: session, pageSize: bus.options.pageSize) { events in
            bus.countCatchUpRows(events.count)
            bus.handingOff { s, woken in
                for event in events { EventBus.receive(event, into: &s, limit: bus.options.bufferLimit, &woken) }
            }
        }
    }

    /// LISTEN is done: read what was missed (or, the first time, where "now" is), then go live.
    func listenerConnected(_ session: ListenerSession) throws {
        let reader = reader(session)
        if let (gaps, horizon) = bus.state.withLock({ s in s.sequencer.map { ($0.gapsToRecheck, $0.horizon) } }) {
            bus.resetCatchUpRows()
            try reader.readMissed(gaps: gaps, after: horizon)
        } else {
            let start = try reader.start(window: Int64(EventBus.startGapWindow))
            let gapTimeout = bus.options.gapTimeout
            bus.state.withLock {
                $0.sequencer = EventSequencer(horizon: start.horizon, gapTimeout: gapTimeout, checkedFrom: start.checkedFrom, gaps: start.gaps)
            }
        }
        let ready = bus.state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.caughtUp = true
            s.listenerPID = session.backendPID
            s.ledger.caughtUp(now: .now)
            defer { s.ready.removeAll() }
            return s.ready
        }
        for continuation in ready { continuation.resume() }
        bus.queueWaker?.listening()
        bus.wakeupBell?.ring()
        bus.scheduleBell?.ring()
    }

    func received(_ notification: PostgresNotification, session: ListenerSession) throws {
        if notification.channel == LeaseQueries.channel {
            bus.queueWaker?.announced(notification.payload)
            return
        }
        if notification.channel == RunTimers.channel {
            bus.wakeupBell?.ring()
            return
        }
        if notification.channel == ScheduleStore.channel {
            bus.scheduleBell?.ring()
            return
        }
        guard let parsed = EventQueries.parseNotification(notification.payload) else {
            bus.logger.warning(
                "ignoring a malformed regent_events notification", metadata: ["payload": "\(notification.payload.prefix(200))"])
            return
        }
        guard let event = try parsed.event ?? reader(session).event(id: parsed.id) else { return }
        let limit = bus.options.bufferLimit
        bus.handingOff { s, woken in
            if s.sequencer != nil { EventBus.receive(event, into: &s, limit: limit, &woken) }
        }
    }

    func tick(_ session: ListenerSession) throws {
        let limit = bus.options.bufferLimit
        let action = bus.handingOff { s, woken -> GapLedger<ContinuousClock.Instant>.TickAction in
            let now = ContinuousClock.now
            if s.sequencer?.nextDeadline != nil {
                EventBus.dispatch(s.sequencer!.tick(now: now), late: false, to: &s, limit: limit, &woken)
            }
            return s.ledger.tick(gaps: s.sequencer?.gapsToRecheck.count ?? 0, now: now)
        }
        if let gaps = action.reportGaps { bus.metrics.eventGaps.record(gaps) }
        if action.checkWriters { try checkGaps(session) }
    }

    /// Reads the given-up gaps that nothing can fill any more one last time, then forgets
    /// them: rolled-back publishes stop costing memory and catch-up reads (see ``GapLedger``).
    private func checkGaps(_ session: ListenerSession) throws {
        let writers = Set(try session.query(EventQueries.eventWriters).map { try $0.decode("vxid", as: String.self) })
        defer { bus.countGapCheck() }
        let settled = bus.state.withLock { s -> (through: Int64, gaps: [ClosedRange<Int64>])? in
            guard let sequencer = s.sequencer, let through = s.ledger.record(writers: writers, horizon: sequencer.horizon, now: .now) else {
                return nil
            }
            return (through, sequencer.gapsToRecheck.filter { $0.upperBound <= through })
        }
        guard let settled, !settled.gaps.isEmpty else { return }
        try reader(session).readGaps(settled.gaps)
        bus.state.withLock { $0.sequencer!.forgetGaps(through: settled.through) }
    }
}
