import Synchronization
import ArgumentParser
import CLibPQ
import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks that print their figures next to a raw baseline measured in the same run.",
        subcommands: [Failover.self, Events.self, Leases.self, Statements.self, JSON.self]
    )

    struct Failover: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Failover time of a local cluster against the physical limit.",
            discussion: """
                The limit: how long PostgreSQL takes to hand a released advisory lock to a raw \
                libpq connection blocked in pg_advisory_lock, measured on the same server in the \
                same run. Then a drill (SIGKILL and SIGTERM rounds) measures Regent's failover: \
                from the signal until a new leader holds the lock and has recorded its term.
                """
        )
        @Option(help: "Nodes in the cluster.") var nodes = 3
        @Option(help: "Drill rounds.") var kills = 30
        @Option(help: "Raw lock hand-over samples.") var samples = 200
        @Option(name: .customLong("database-url"), help: ArgumentHelp("Use this database.", valueName: "url"))
        var databaseURL: String?
        @Flag(help: "Also measure pg_try_advisory_lock polling every 10 ms and 100 ms (why Regent blocks instead).")
        var comparePolling = false

        func validate() throws {
            guard (2...16).contains(nodes), (3...1000).contains(kills), (10...100_000).contains(samples) else {
                throw ValidationError("--nodes 2-16, --kills 3-1000, --samples 10-100000")
            }
        }

        func run() async throws {
            let env = try await DrillEnvironment.start(databaseURL: databaseURL, nodes: nodes) { print($0) }
            let raw: [Duration]
            let result: FailoverDrill.Result
            var polled: [(String, [Duration])] = []
            var crash: [Duration] = []
            do {
                print("▶ raw crash baseline: \(samples / 4) SIGKILLs of a psql holding the lock")
                crash = try RawLockHandover.measureCrash(conninfo: env.databaseURL, samples: max(10, samples / 4))
                print("▶ raw baseline: \(samples) advisory-lock hand-overs between two libpq connections")
                raw = try RawLockHandover.measure(conninfo: env.databaseURL, samples: samples)
                if comparePolling {
                    for period in [Duration.milliseconds(10), .milliseconds(100)] {
                        print("▶ raw try-lock polling every \(period): 30 hand-overs")
                        polled.append((
                            "raw try-lock polling every \(Int(period.milliseconds)) ms",
                            try RawLockHandover.measure(conninfo: env.databaseURL, samples: 30, waiter: .polling(period: period))
                        ))
                    }
                }
                print("▶ Regent: \(kills) failovers")
                result = try await FailoverDrill(
                    cluster: env.cluster, probe: env.probe, databaseURL: env.databaseURL, kills: kills, gracefulEvery: 3,
                    say: { _ in }
                ).run()
            } catch {
                await env.close()
                throw error
            }
            await env.close()
            let base = Figures(raw)
            let crashBase = Figures(crash)
            func row(_ label: String, _ samples: [Duration], against limit: Figures) -> [String] {
                let f = Figures(samples)
                return [label, "\(samples.count)", ms(f.median), ms(f.p99),
                        String(format: "%.1f×", f.median.milliseconds / max(limit.median.milliseconds, 0.001))]
            }
            var rows = [row("raw: holder closes, blocked waiter gets the lock (limit)", raw, against: base)]
            for (label, samples) in polled { rows.append(row(label, samples, against: base)) }
            if !result.sigterm.isEmpty { rows.append(row("Regent after SIGTERM (vs. clean close)", result.sigterm, against: base)) }
            rows.append(row("raw: psql holder SIGKILLed, blocked waiter gets the lock (limit)", crash, against: crashBase))
            if !result.sigkill.isEmpty { rows.append(row("Regent after SIGKILL (vs. psql SIGKILL)", result.sigkill, against: crashBase)) }
            print("")
            print(table(["what", "n", "median", "p99", "median / limit"], rows))
            if !result.violations.isEmpty {
                print("\n✘ invariants broken during the bench:")
                for v in result.violations { print("  - \(v)") }
                throw ExitCode(1)
            }
        }
    }
}

/// The physical limit of advisory-lock failover, with libpq and nothing else.
enum RawLockHandover {
    /// How the waiting connection asks for the lock.
    enum Waiter {
        /// Blocked in `pg_advisory_lock` (what Regent does).
        case blocking
        /// `pg_try_advisory_lock` every `period` (what TTL/poll-based electors do).
        case polling(period: Duration)
    }

    /// The limit after a crash: a `psql` process holds the lock with its session idle, is
    /// SIGKILLed, and a raw libpq waiter blocked in `pg_advisory_lock` gets the lock.
    static func measureCrash(conninfo: String, samples: Int) throws -> [Duration] {
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

    static func measure(conninfo: String, samples: Int, waiter mode: Waiter = .blocking) throws -> [Duration] {
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

/// The database a benchmark runs on: `databaseURL`, or a private PostgreSQL started here
/// (returned so the caller destroys it when done).
func benchDatabase(_ databaseURL: String?) throws -> (url: String, embedded: EmbeddedPostgres?) {
    if let databaseURL { return (databaseURL, nil) }
    print("▶ starting a private PostgreSQL …")
    let pg = try EmbeddedPostgres.start()
    return (pg.url(), pg)
}
