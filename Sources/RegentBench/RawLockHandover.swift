import CLibPQ
import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore
import RegentDrill
import Synchronization

/// The physical limit of advisory-lock failover, with libpq and nothing else.
package enum RawLockHandover {
    /// How the waiting connection asks for the lock.
    package enum Waiter {
        /// Blocked in `pg_advisory_lock` (what Regent does).
        case blocking
        /// `pg_try_advisory_lock` every `period` (what TTL/poll-based electors do).
        case polling(period: Duration)
    }

    /// The limit after a crash: a `psql` process holds the lock with its session idle, is
    /// SIGKILLed, and a raw libpq waiter blocked in `pg_advisory_lock` gets the lock.
    package static func measureCrash(conninfo: String, samples: Int) throws -> [Duration] {
        var out: [Duration] = []
        for _ in 0..<samples {
            var fds: [Int32] = [0, 0]
            guard pipe(&fds) == 0 else { throw RegentError(.bootFailed, "raw crash baseline: pipe failed") }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            posix_spawn_file_actions_adddup2(&actions, fds[0], 0)
            posix_spawn_file_actions_addclose(&actions, fds[1])
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
            let argv = ["psql", "-X", "-q", conninfo]
            let cArgs = argv.map { strdup($0) } + [nil]
            var pid: pid_t = 0
            let rc = posix_spawnp(&pid, "psql", &actions, nil, cArgs, environ)
            cArgs.forEach { free($0) }
            posix_spawn_file_actions_destroy(&actions)
            close(fds[0])
            guard rc == 0 else { throw RegentError(.bootFailed, "raw crash baseline needs psql (apt-get install postgresql-client)") }
            let command = "SELECT pg_advisory_lock(42, 4242);\n"
            _ = command.withCString { write(fds[1], $0, strlen($0)) }
            let check = PQconnectdb(conninfo)
            func count(_ granted: Bool) -> Int {
                let r = PQexec(check, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 42 AND objid = 4242 AND \(granted ? "" : "NOT ")granted")
                defer { PQclear(r) }
                return Int(r.map { String(cString: PQgetvalue($0, 0, 0)) } ?? "0") ?? 0
            }
            while count(true) == 0 { usleep(200) }
            guard let waiter = PQconnectdb(conninfo), PQstatus(waiter) == CONNECTION_OK else {
                throw RegentError(.bootFailed, "raw baseline: cannot connect")
            }
            let done = DispatchSemaphore(value: 0)
            let gotAt = Mutex<ContinuousClock.Instant?>(nil)
            // Safe: from here on only the waiter thread uses this connection; the main thread
            // touches it again (PQfinish) only after done.wait().
            nonisolated(unsafe) let waiterConn = waiter
            Thread {
                PQclear(PQexec(waiterConn, "SELECT pg_advisory_lock(42, 4242)"))
                gotAt.withLock { $0 = .now }
                done.signal()
            }.start()
            while count(false) == 0 { usleep(200) }
            PQfinish(check)
            let killed = ContinuousClock.now
            kill(pid, SIGKILL)
            done.wait()
            if let at = gotAt.withLock({ $0 }) { out.append(killed.duration(to: at)) }
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            close(fds[1])
            PQfinish(waiter)
        }
        return out
    }

    package static func measure(conninfo: String, samples: Int, waiter mode: Waiter = .blocking) throws -> [Duration] {
        var out: [Duration] = []
        for _ in 0..<samples {
            guard let holder = PQconnectdb(conninfo), PQstatus(holder) == CONNECTION_OK,
                let waiter = PQconnectdb(conninfo), PQstatus(waiter) == CONNECTION_OK
            else { throw RegentError(.bootFailed, "raw baseline: cannot connect") }
            PQclear(PQexec(holder, "SELECT pg_advisory_lock(42, 4242)"))
            // The waiter blocks in pg_advisory_lock on its own thread; the main thread closes the holder.
            let done = DispatchSemaphore(value: 0)
            let gotAt = Mutex<ContinuousClock.Instant?>(nil)
            // Safe: from here on only the waiter thread uses this connection; the main thread
            // touches it again (PQfinish) only after done.wait().
            nonisolated(unsafe) let waiterConn = waiter
            let polling: Duration? = if case .polling(let p) = mode { p } else { nil }
            let thread = Thread {
                if let period = polling {
                    while true {
                        let r = PQexec(waiterConn, "SELECT pg_try_advisory_lock(42, 4242)")
                        let got = r.map { String(cString: PQgetvalue($0, 0, 0)) } == "t"
                        PQclear(r)
                        if got { break }
                        usleep(UInt32(period.milliseconds * 1000))
                    }
                } else {
                    PQclear(PQexec(waiterConn, "SELECT pg_advisory_lock(42, 4242)"))
                }
                gotAt.withLock { $0 = .now }
                done.signal()
            }
            thread.start()
            // Wait until the waiter is really queued on the lock (a poller: has tried once),
            // then a random part of a period so polls and releases are not in phase.
            let check = PQconnectdb(conninfo)
            if let period = polling {
                usleep(UInt32(period.milliseconds * 1000 * Double.random(in: 1...2)))
            }
            while polling == nil {
                let r = PQexec(check, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 42 AND objid = 4242 AND NOT granted")
                let queued = r.map { String(cString: PQgetvalue($0, 0, 0)) } ?? "0"
                PQclear(r)
                if queued == "1" { break }
                usleep(200)
            }
            PQfinish(check)
            let released = ContinuousClock.now
            PQfinish(holder)
            done.wait()
            if let at = gotAt.withLock({ $0 }) { out.append(released.duration(to: at)) }
            PQfinish(waiter)
        }
        return out
    }
}

