import Foundation

/// What one statement of a migration file does to a table that existed before the file ran,
/// read from its text (nothing is executed): the lock it takes, and whether it rewrites or scans
/// the whole table while holding it. `regent migrate --plan` prints these; a test refuses an
/// expand migration that would hold a lock on a hot table long enough to stall claims.
public struct TableEffect: Sendable, Hashable, CustomStringConvertible {
    /// The table (or index, for DROP INDEX) as written in the file, lowercased.
    public let table: String
    /// PostgreSQL's name for the table-level lock mode, e.g. `ACCESS EXCLUSIVE`.
    public let lock: String
    /// Every row is rewritten into a new file while the lock is held (ALTER COLUMN … TYPE,
    /// a volatile default, SET LOGGED, VACUUM FULL, CLUSTER).
    public let rewrites: Bool
    /// Every row is read while the lock is held (a new index, SET NOT NULL, a validated
    /// constraint), or written (UPDATE / DELETE without a bound).
    public let scans: Bool
    /// The statement's first words, e.g. `ALTER TABLE`.
    public let statement: String

    public var description: String {
        "\(table) \(lock)" + (rewrites ? " (rewrites the table)" : scans ? " (reads every row)" : "") + " by \(statement)"
    }

    /// Locks that make ordinary reads or writes of the table wait while they are held.
    public var blocksTraffic: Bool {
        ["ACCESS EXCLUSIVE", "EXCLUSIVE", "SHARE ROW EXCLUSIVE", "SHARE"].contains(lock)
    }

    /// The tables every claim, completion, heartbeat or publish touches: a lock that blocks
    /// traffic on one of them stalls the cluster for as long as it is held (or waited for).
    public static let hotTables: Set<String> = [
        "workflow.ready", "workflow.executions", "workflow.leases", "workflow.attempts", "workflow.runs",
        "workflow.run_steps", "workflow.workers", "workflow.wakeups", "workflow.signals",
        "engine.instances", "engine.leadership", "engine.events", "auth.tokens",
    ]

    public var onHotTable: Bool { Self.hotTables.contains(table) }
}

extension Migration {
    /// The effects of this file's statements on tables it did not create itself.
    public var effects: [TableEffect] { MigrationEffects.effects(of: sql) }
}

enum MigrationEffects {
    static func effects(of sql: String) -> [TableEffect] {
        var created = Set<String>()
        // Domains this file created with no constraint yet (`CREATE DOMAIN d AS text`): a column
        // retyped to one over its own type keeps its file (PostgreSQL checks no value, rewrites
        // nothing). A domain stops being one once a constraint is added to it.
        var plainDomains = Set<String>()
        var out: [TableEffect] = []
        for statement in statements(of: sql) {
            let t = statement
            func word(_ i: Int) -> String { i < t.count ? t[i] : "" }
            func effect(_ table: String, _ lock: String, _ first: Int, rewrites: Bool = false, scans: Bool = false) {
                let name = table.trimmingSuffix(",")
                guard !name.isEmpty, !created.contains(name) else { return }
                out.append(TableEffect(
                    table: name, lock: lock, rewrites: rewrites, scans: scans,
                    statement: t.prefix(first).joined(separator: " ").uppercased()))
            }
            /// The index of the first word after the optional words in `skipping`.
            func after(_ i: Int, skipping: [String]) -> Int {
                var i = i
                while skipping.contains(word(i)) { i += 1 }
                return i
            }
            switch (word(0), word(1)) {
            case ("create", _) where t.contains("table") && t.firstIndex(of: "table")! <= 3 && !t.contains("trigger"):
                let i = after(t.firstIndex(of: "table")! + 1, skipping: ["if", "not", "exists"])
                created.insert(word(i).split(separator: "(").first.map(String.init) ?? word(i))
            case ("create", "domain"):
                if t.count == 5, word(3) == "as", ["text", "varchar", "bigint", "integer", "smallint", "boolean", "jsonb", "numeric"].contains(word(4)) {
                    plainDomains.insert(word(2))
                }
            case ("alter", "domain"):
                if t.contains("add") || t.contains("set") { plainDomains.remove(word(2)) }
            case ("create", _) where t.prefix(4).contains("index"):
                guard let on = t.firstIndex(of: "on") else { continue }
                let concurrently = t.contains("concurrently")
                effect(word(after(on + 1, skipping: ["only"])), concurrently ? "SHARE UPDATE EXCLUSIVE" : "SHARE", 2, scans: true)
            case ("create", _) where t.prefix(4).contains("trigger"):
                guard let on = t.firstIndex(of: "on") else { continue }
                effect(word(on + 1), "SHARE ROW EXCLUSIVE", t.prefix(4).firstIndex(of: "trigger")! + 1)
            case ("alter", "table"):
                let i = after(2, skipping: ["if", "exists", "only"])
                let rest = Array(t[(i + 1)...])
                let text = " " + rest.joined(separator: " ") + " "
                let subcommands = Self.topLevelParts(text).map { " " + $0.trimmingPrefix(" ") }
                let lightOnly = subcommands.allSatisfy { $0.hasPrefix(" validate constraint") || $0.hasPrefix(" set (") || $0.hasPrefix(" set(") }
                let volatile = ["clock_timestamp", "random", "gen_random_uuid", "uuid_generate", "nextval"]
                // ALTER COLUMN … TYPE rewrites the table, except to a plain domain of this file.
                let retypes = subcommands.contains { sub in
                    guard sub.contains("alter column"), let type = sub.range(of: " type ") else { return false }
                    let target = sub[type.upperBound...].split(separator: " ").first.map { String($0).trimmingSuffix(",") } ?? ""
                    return !plainDomains.contains(target)
                }
                let rewrites = retypes
                    || text.contains(" set logged") || text.contains(" set unlogged")
                    || subcommands.contains { sub in sub.contains(" add column") && sub.contains(" default ") && volatile.contains { sub.contains($0) } }
                    || text.contains(" stored")
                let scans = text.contains(" set not null") || text.contains("validate constraint")
                    || subcommands.contains { $0.contains(" add ") && ($0.contains(" check") || $0.contains(" foreign key") || $0.contains(" unique") || $0.contains(" primary key")) && !$0.contains("not valid") }
                effect(word(i), lightOnly ? "SHARE UPDATE EXCLUSIVE" : "ACCESS EXCLUSIVE", 2, rewrites: rewrites, scans: scans)
            case ("drop", "table"), ("truncate", _):
                var k = after(word(0) == "drop" || word(1) == "table" ? 2 : 1, skipping: ["if", "exists", "only"])
                repeat {
                    effect(word(k), "ACCESS EXCLUSIVE", word(0) == "drop" ? 2 : 1)
                    k += 1
                } while word(k - 1).hasSuffix(",") && k < t.count
            case ("drop", "index"):
                let i = after(2, skipping: ["concurrently", "if", "exists"])
                effect(word(i), t.contains("concurrently") ? "SHARE UPDATE EXCLUSIVE" : "ACCESS EXCLUSIVE", 2)
            case ("drop", "trigger"):
                guard let on = t.firstIndex(of: "on") else { continue }
                effect(word(on + 1), "ACCESS EXCLUSIVE", 2)
            case ("lock", _):
                let i = after(1, skipping: ["table", "only"])
                let mode = t.firstIndex(of: "in").map { t[($0 + 1)...].prefix { $0 != "mode" }.joined(separator: " ").uppercased() } ?? "ACCESS EXCLUSIVE"
                effect(word(i), mode, 1)
            case ("update", _):
                effect(word(after(1, skipping: ["only"])), "ROW EXCLUSIVE", 1, scans: !t.contains("where"))
            case ("delete", "from"):
                effect(word(after(2, skipping: ["only"])), "ROW EXCLUSIVE", 2, scans: !t.contains("where"))
            case ("vacuum", _) where t.contains("full"), ("cluster", _):
                if let name = t.last, name != "full", name != "cluster" { effect(name, "ACCESS EXCLUSIVE", 1, rewrites: true) }
            default:
                continue
            }
        }
        return out
    }

    /// An ALTER TABLE's subcommands: split at the commas outside parentheses (a CHECK's
    /// `IN ('a', 'b')` is one subcommand).
    static func topLevelParts(_ text: String) -> [Substring] {
        var parts: [Substring] = []
        var depth = 0
        var start = text.startIndex
        for i in text.indices {
            switch text[i] {
            case "(": depth += 1
            case ")": depth = max(0, depth - 1)
            case "," where depth == 0:
                parts.append(text[start..<i])
                start = text.index(after: i)
            default: break
            }
        }
        parts.append(text[start...])
        return parts
    }

    /// The file's statements as lowercased words, with comments, string literals and
    /// dollar-quoted bodies (function code) left out.
    static func statements(of sql: String) -> [[String]] {
        var text = ""
        let chars = Array(sql)
        var i = 0
        while i < chars.count {
            let c = chars[i]
            if c == "-", i + 1 < chars.count, chars[i + 1] == "-" {
                while i < chars.count, chars[i] != "\n" { i += 1 }
                text.append(" ")
            } else if c == "/", i + 1 < chars.count, chars[i + 1] == "*" {
                i += 2
                while i + 1 < chars.count, !(chars[i] == "*" && chars[i + 1] == "/") { i += 1 }
                i += 2
                text.append(" ")
            } else if c == "'" {
                i += 1
                while i < chars.count {
                    if chars[i] == "'" {
                        if i + 1 < chars.count, chars[i + 1] == "'" { i += 2; continue }
                        break
                    }
                    i += 1
                }
                i += 1
                text.append(" '' ")
            } else if c == "$", let close = dollarTag(chars, at: i) {
                // $tag$ … $tag$: skip to the matching closing tag.
                let tag = Array(close)
                var j = i + tag.count
                while j + tag.count <= chars.count, Array(chars[j..<(j + tag.count)]) != tag { j += 1 }
                i = j + tag.count
                text.append(" $body$ ")
            } else {
                text.append(c)
                i += 1
            }
        }
        return text.lowercased().split(separator: ";").map { statement in
            statement.replacingOccurrences(of: "(", with: " ( ").replacingOccurrences(of: ")", with: " ) ")
                .split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }).map(String.init)
        }.filter { !$0.isEmpty }
    }

    /// `$tag$` starting at `i`, when one does.
    private static func dollarTag(_ chars: [Character], at i: Int) -> String? {
        var j = i + 1
        while j < chars.count, chars[j].isLetter || chars[j].isNumber || chars[j] == "_" { j += 1 }
        guard j < chars.count, chars[j] == "$" else { return nil }
        if j > i + 1, chars[i + 1].isNumber { return nil }  // $1 is a parameter, not a tag
        return String(chars[i...j])
    }
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> String {
        var s = self
        while s.hasSuffix(suffix) { s.removeLast(suffix.count) }
        return s
    }

    fileprivate func trimmingPrefix(_ prefix: String) -> String {
        var s = Substring(self)
        while s.hasPrefix(prefix) { s = s.dropFirst(prefix.count) }
        return String(s)
    }
}

extension Substring {
    fileprivate func trimmingPrefix(_ prefix: String) -> String { String(self).trimmingPrefix(prefix) }
}
