import ArgumentParser
import Foundation
import PostgresClient
import RegentCore

struct RunsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "runs", abstract: "Start, list, show, cancel, retry and signal workflow runs.",
        subcommands: [Start.self, List.self, Show.self, Cancel.self, Retry.self, Signal.self])

    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a run of TYPE on its routed package version (pinned to it); prints the run id.",
            discussion: """
                With --idempotency-key, a key already used for the type prints that run's id, marked "existing", and starts nothing. \
                With --version, the run starts on that stored version of the type instead of the routed one (a canary); \
                a version that is not stored is refused.
                """)
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Workflow type.") var type: String
        @Option(help: "The run's input: a JSON object.") var input = "{}"
        @Option(help: "Start at most one run per key and type (1-255 characters).") var idempotencyKey: String?
        @Option(help: "Fail the run with deadline_exceeded after this long (e.g. 10m).") var deadline: String?
        @Option(help: "Start on this stored version (content hash) of TYPE, routed or not.") var version: String?
        @Option(help: "Recorded as who started it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"

        func request() throws -> RunStore.StartRequest {
            var r = RunStore.StartRequest(workflowType: try validated { try WorkflowType(type) }, input: input, idempotencyKey: idempotencyKey)
            if let deadline { r.deadline = try validated { try parseDuration(deadline, flag: "--deadline") } }
            r.version = version
            try validated { try r.check() }
            return r
        }

        func validate() throws { _ = try request() }

        func run() async throws {
            try log.bootstrap()
            let started = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await RunStore().start(try request(), actor: .named(actor), on: conn)
            }
            print(started.runID + (started.created ? "" : " existing"))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Runs, newest first.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Option(help: "Only this workflow type.") var type: String?
        @Option(help: "Only this state: \(RunStore.states.joined(separator: ", ")).") var state: String?
        @Option(help: "Runs per page (1-1000).") var limit = 50
        @Option(help: "Continue after this cursor (printed after a full page).") var after: String?
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if let type { _ = try validated { try WorkflowType(type) } }
            if let state, !RunStore.states.contains(state) {
                throw ValidationError("invalid --state \(state.debugDescription): one of \(RunStore.states.joined(separator: ", "))")
            }
            guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1 to 1000, got \(limit)") }
        }

        func run() async throws {
            try log.bootstrap()
            let page = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await RunStore().list(type: try type.map { try WorkflowType($0) }, state: state, after: after, limit: limit, on: conn)
            }
            if json { return try printJSON(page) }
            print(table(["run", "type", "state", "reason", "started", "took", "version"], page.runs.map { r in
                [r.runID, r.workflowType, r.state, r.reason ?? "", ISO8601DateFormatter().string(from: r.startedAt),
                 r.finishedAt.map { took(from: r.startedAt, to: $0) } ?? "", String(r.packageHash.prefix(12))]
            }))
            if let next = page.nextCursor { print("more: --after \(next)") }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A run: its steps, its budget ledger and the package version it is pinned to.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Run id (run_…).") var runID: String
        @Flag(help: "Print JSON.") var json = false

        func validate() throws { try validated { try RunStore.checkRunID(runID) } }

        func run() async throws {
            try log.bootstrap()
            guard let r = try await PostgresConnection.withConnection(try database.configuration(), { try await RunStore().get(runID, on: $0) }) else {
                throw RegentError(.notFound, "no run \(runID)")
            }
            if json { return try printJSON(r) }
            print("\(r.runID)  \(r.workflowType)  \(r.state)\(r.reason.map { " (\($0))" } ?? "")")
            print("pinned to  \(r.packageHash)")
            print("started    \(ISO8601DateFormatter().string(from: r.startedAt)) by \(r.startedBy)"
                + (r.finishedAt.map { ", finished after \(took(from: r.startedAt, to: $0))" + (r.finishedBy.map { " by \($0)" } ?? "") } ?? ""))
            if let d = r.deadline { print("deadline   \(ISO8601DateFormatter().string(from: d))") }
            if let e = r.error { print("error      \(e)") }
            if let limit = r.budgetLimit {
                print("budget     \(number(r.budgetSpent)) of \(number(limit)) \(r.budgetUnit ?? "") spent, \(number(r.budgetRemaining ?? 0)) left")
            }
            if let parent = r.parentRunID { print("child of   \(parent) (step \(r.parentStep ?? "?"))") }
            print(table(["step", "kind", "after", "state", "attempts", "worker or wait", "took"], r.steps.map { s in
                guard let wait = s.wait else {
                    return [s.name, s.kind, s.after.joined(separator: ","), s.state, "\(s.attempts)" + (s.maxAttempts.map { "/\($0)" } ?? ""), s.worker ?? "",
                            s.queuedAt.flatMap { q in s.finishedAt.map { took(from: q, to: $0) } } ?? ""]
                }
                return [s.name, s.kind, s.after.joined(separator: ","), s.state, "", RunsCommand.waitText(s.kind, wait), wait.waitedMs.map { compact(.milliseconds($0)) } ?? ""]
            }))
            if !r.signals.isEmpty {
                print(table(["signal", "id", "received", "consumed by", "sent by"], r.signals.map {
                    [$0.name, $0.signalID, ISO8601DateFormatter().string(from: $0.receivedAt), $0.consumedBy ?? "(kept)", $0.sentBy]
                }))
            }
            if !r.ledger.isEmpty {
                print(table(["ledger entry", "step", "amount", "unit"], r.ledger.map { [$0.entryID, $0.step, number($0.amount), $0.unit] }))
            }
            if let output = r.output { print("output     \(output)") }
        }
    }

    /// What a timer, signal or child step waits for (or waited for).
    static func waitText(_ kind: String, _ w: RunStore.Wait) -> String {
        let due = w.dueAt.map { ISO8601DateFormatter().string(from: $0) }
        switch kind {
        case "timer": return due.map { "until \($0)" } ?? ""
        case "signal": return "signal \(w.signal ?? "")" + (due.map { " (timeout \($0), then \(w.onTimeout ?? "fail"))" } ?? "")
        case "child": return "child \(w.childType ?? "")" + (w.childRunID.map { " \($0)" } ?? "") + (w.childVersion.map { " on \($0.prefix(12))" } ?? "")
        default: return ""
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cancel a running run: steps not started are skipped, queued and running ones fenced (their completions are refused).")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Run id (run_…).") var runID: String
        @Option(help: "Why (recorded with the run).") var reason: String
        @Option(help: "Recorded as who cancelled it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"

        func validate() throws { try validated { try RunStore.checkRunID(runID) } }

        func run() async throws {
            try log.bootstrap()
            let outcome = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await RunStore().cancel(runID, reason: reason, actor: .named(actor), on: conn)
            }
            print(outcome.rawValue)
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Resume a failed or cancelled run on its pinned version: succeeded steps keep their outputs, the others run again.",
            discussion: """
                --steps failed (the default) resumes a run in which a step failed; --steps all-unfinished resumes any failed or \
                cancelled run (a cancel, a deadline, a budget stop). Every step that did not succeed goes back to pending and \
                those whose `after` steps all succeeded are queued at once, with fresh attempts. The deadline, if the run had \
                one, starts again with its original allowance (or --deadline from now); the budget's ledger continues \
                (--budget raises the limit). Prints the steps queued now.
                """)
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Run id (run_…).") var runID: String
        @Option(help: "failed or all-unfinished.") var steps = "failed"
        @Option(help: "A new budget limit, above what the run spent.") var budget: Double?
        @Option(help: "A new deadline from now (e.g. 10m).") var deadline: String?
        @Option(help: "Recorded as who retried it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"

        func request() throws -> RunStore.RetryRequest {
            var r = RunStore.RetryRequest(mode: try validated { try RunStore.RetryMode(parsing: steps) }, budgetLimit: budget)
            if let deadline { r.deadline = try validated { try parseDuration(deadline, flag: "--deadline") } }
            try validated { try r.check() }
            return r
        }

        func validate() throws {
            try validated { try RunStore.checkRunID(runID) }
            _ = try request()
        }

        func run() async throws {
            try log.bootstrap()
            let retried = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await RunStore().retry(runID, try request(), actor: .named(actor), on: conn)
            }
            print("retried \(retried.runID): queued \(retried.requeued.isEmpty ? "none" : retried.requeued.joined(separator: ", "))"
                  + "; reset \(retried.reset.joined(separator: ", "))")
        }
    }
}

extension RunsCommand {
    struct Signal: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send a signal to a run: the step waiting for NAME succeeds with --data as its output and the run goes on.",
            discussion: """
                A signal sent before the run reaches its wait is kept, and the first wait of that name consumes it (one \
                signal per wait, the first by arrival; later ones are listed by runs show but not consumed). With --id, \
                sending the same signal again is the same delivery (a retry after a lost answer). A finished run or a \
                name no step waits for is refused. Prints consumed (by which step) or kept.
                """)
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "Run id (run_…).") var runID: String
        @Argument(help: "Signal name (the step's wait_for).") var name: String
        @Option(help: "The signal's data: any JSON (the step's output).") var data = "null"
        @Option(help: "A signal id of your own (1-128 of A-Z a-z 0-9 _ . : -): a resend is the same delivery.") var id: String?
        @Option(help: "Recorded as who sent it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"

        func validate() throws {
            try validated { try RunStore.checkRunID(runID) }
            if let id { try validated { try RunStore.checkSignalID(id) } }
        }

        func run() async throws {
            try log.bootstrap()
            let sent = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await RunStore().signal(runID, name: name, payloadJSON: data, signalID: id, actor: .named(actor), on: conn)
            }
            print((sent.consumedBy.map { "consumed by \($0)" } ?? "kept") + " (signal \(sent.signalID)\(sent.duplicate ? ", sent before" : ""); run \(sent.runState))")
        }
    }
}

func took(from: Date, to: Date) -> String { compact(.milliseconds(Int64((to.timeIntervalSince(from) * 1000).rounded()))) }

func number(_ d: Double) -> String { d.rounded() == d && abs(d) < 1e15 ? String(Int64(d)) : String(d) }
