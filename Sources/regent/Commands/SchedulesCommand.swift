import ArgumentParser
import Foundation
import PostgresClient
import RegentCore

struct SchedulesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedules", abstract: "Cron schedules: the leader starts a run of a workflow type at every slot (docs/flow-control.md).",
        subcommands: [Create.self, List.self, Show.self, Pause.self, Resume.self, Delete.self, Trigger.self])

    struct NameArgument: ParsableArguments {
        @Argument(help: "The schedule's name (1-128 letters, digits or _ . : -).") var name: String
        func value() throws -> ScheduleName { try validated { try ScheduleName(name) } }
        func validate() throws { _ = try value() }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a schedule; its first slot is the first after now.",
            discussion: """
                --cron takes five fields (minute hour day-of-month month day-of-week) or six with a leading second, with lists, \
                ranges, steps, names and @hourly, @daily, @weekly, @monthly, @yearly, read in --timezone's wall clock (an IANA \
                name; daylight-saving changes are followed: a slot that does not exist is skipped, a repeated one fires once). \
                Each slot's run has the idempotency key schedule:NAME:SLOT, so no slot starts two runs. --catch-up decides what \
                happens to slots missed while no leader could fire: skip (those more than a minute late), latest, or all (the \
                latest 100). --jitter delays each slot by a fixed amount up to it, the same on every node.
                """)
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "The schedule's name (1-128 letters, digits or _ . : -).") var name: String
        @Option(help: "The workflow type each slot starts.") var type: String
        @Option(help: "The cron expression, e.g. '*/5 * * * *'.") var cron: String
        @Option(help: "An IANA time zone, e.g. Europe/Paris.") var timezone = "UTC"
        @Option(help: "Each run's input: a JSON object.") var input = "{}"
        @Option(help: "skip, latest or all.") var catchUp = "skip"
        @Option(help: "Delay each slot by up to this much (e.g. 10s; at most 1h).") var jitter = "0s"
        @Option(help: "Recorded as who created it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"
        @Flag(help: "Print JSON.") var json = false

        func spec() throws -> ScheduleSpec {
            try validated {
                try ScheduleSpec(
                    name: name, workflowType: type, cron: cron, timeZone: timezone, input: input, catchUp: catchUp,
                    jitter: try parseDuration(jitter, flag: "--jitter", maximum: ScheduleSpec.maxJitter))
            }
        }

        func validate() throws { _ = try spec() }

        func run() async throws {
            try log.bootstrap()
            let schedule = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await ScheduleStore().create(try spec(), actor: .named(actor), on: conn)
            }
            if json { return try printJSON(schedule) }
            print("\(schedule.name): next slot \(ISO8601DateFormatter().string(from: schedule.nextSlot))")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Schedules by name.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Option(help: "Schedules per page (1-1000).") var limit = 100
        @Option(help: "Continue after this name (printed after a full page).") var after: String?
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1 to 1000, got \(limit)") }
        }

        func run() async throws {
            try log.bootstrap()
            let page = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await ScheduleStore().list(after: after, limit: limit, on: conn)
            }
            if json { return try printJSON(page) }
            let f = ISO8601DateFormatter()
            print(table(["schedule", "type", "cron", "zone", "state", "next slot", "fired", "skipped", "last error"], page.schedules.map { s in
                [s.name, s.workflowType, s.cron, s.timezone, s.paused ? "paused" : "active", f.string(from: s.nextSlot), String(s.fired),
                 String(s.skipped), String((s.lastError ?? "").prefix(60))]
            }))
            if let next = page.nextCursor { print("more: --after \(next)") }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A schedule and what became of its newest slots.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @OptionGroup var name: NameArgument
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try log.bootstrap()
            let doc = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await ScheduleStore().show(try name.value(), on: conn)
            }
            if json { return try printJSON(doc) }
            let (schedule, fires) = (doc.schedule, doc.recentFires)
            let f = ISO8601DateFormatter()
            print("""
                schedule   \(schedule.name) (\(schedule.paused ? "paused" : "active"))
                type       \(schedule.workflowType)
                cron       \(schedule.cron) in \(schedule.timezone), catch-up \(schedule.catchUp), jitter \(schedule.jitterMs) ms
                next slot  \(f.string(from: schedule.nextSlot)) (fires at \(f.string(from: schedule.nextFireAt)))
                fired      \(schedule.fired), skipped \(schedule.skipped)\(schedule.lastError.map { "\nlast error \($0)" } ?? "")
                """)
            print(table(["slot", "outcome", "run", "late", "term"], fires.map { fire in
                [f.string(from: fire.slot) + (fire.throughSlot.map { " … \(f.string(from: $0)) (\(fire.slots))" } ?? ""), fire.outcome,
                 fire.runID ?? fire.error ?? "", fire.dueAt.map { took(from: $0, to: fire.firedAt) } ?? "", fire.term.map(String.init) ?? ""]
            }))
        }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Pause a schedule: no slot fires until it is resumed.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @OptionGroup var name: NameArgument
        @Option(help: "Recorded as who paused it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"

        func run() async throws {
            try log.bootstrap()
            _ = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await ScheduleStore().pause(try name.value(), actor: .named(actor), on: conn)
            }
            print("paused \(name.name)")
        }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Resume a paused schedule from now (slots that passed while it was paused are not fired).")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @OptionGroup var name: NameArgument
        @Option(help: "Recorded as who resumed it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"

        func run() async throws {
            try log.bootstrap()
            let schedule = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await ScheduleStore().resume(try name.value(), actor: .named(actor), on: conn)
            }
            print("resumed \(schedule.name): next slot \(ISO8601DateFormatter().string(from: schedule.nextSlot))")
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a schedule (runs it started are untouched).")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @OptionGroup var name: NameArgument
        @Option(help: "Recorded as who deleted it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"

        func run() async throws {
            try log.bootstrap()
            try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await ScheduleStore().delete(try name.value(), actor: .named(actor), on: conn)
            }
            print("deleted \(name.name)")
        }
    }

    struct Trigger: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a run of the schedule now, outside its slots; prints the run id.",
            discussion: "With --key, a trigger repeated with the same key prints that run's id, marked \"existing\", and starts nothing.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @OptionGroup var name: NameArgument
        @Option(help: "At most one run per key (1-64 letters, digits or _ . : -).") var key: String?
        @Option(help: "Recorded as who triggered it.") var actor = "cli:\(ProcessInfo.processInfo.userName)"

        func run() async throws {
            try log.bootstrap()
            let started = try await PostgresConnection.withConnection(try database.configuration()) { conn in
                try await ScheduleStore().trigger(try name.value(), key: key, actor: .named(actor), on: conn)
            }
            print(started.runID + (started.created ? "" : " existing"))
        }
    }
}
