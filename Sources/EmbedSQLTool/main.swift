import Foundation

// Reads sql/<schema>/NNNN_name.sql and sql/<schema>/functions/<name>.sql and writes a Swift
// file holding each file's text.
// Used by the EmbedSQL build plugin; refuses misnamed files so a typo fails the build.

let args = CommandLine.arguments
guard args.count == 3 else {
    FileHandle.standardError.write(Data("usage: EmbedSQLTool <sql-dir> <output.swift>\n".utf8))
    exit(2)
}
let sqlDir = URL(fileURLWithPath: args[1])
let output = URL(fileURLWithPath: args[2])
let fm = FileManager.default

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    exit(1)
}

func isIdentifier(_ s: String) -> Bool {
    guard let first = s.unicodeScalars.first, s.utf8.count <= 63 else { return false }
    let lower = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyz_")
    let rest = lower.union(CharacterSet(charactersIn: "0123456789"))
    return lower.contains(first) && s.unicodeScalars.allSatisfy { rest.contains($0) }
}

var entries: [(schema: String, version: Int, name: String, sql: String)] = []
var functionFiles: [(schema: String, name: String, sql: String)] = []
var indexFiles: [(schema: String, name: String, table: String, sql: String)] = []
let schemas = ((try? fm.contentsOfDirectory(atPath: sqlDir.path)) ?? []).sorted()
for schema in schemas {
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: sqlDir.appendingPathComponent(schema).path, isDirectory: &isDir), isDir.boolValue else {
        continue
    }
    guard isIdentifier(schema) else { fail("sql/\(schema): schema folder names must be lowercase identifiers") }
    let files = ((try? fm.contentsOfDirectory(atPath: sqlDir.appendingPathComponent(schema).path)) ?? []).sorted()
    var seen = Set<Int>()
    for file in files where file.hasSuffix(".sql") {
        let stem = String(file.dropLast(4))
        let parts = stem.split(separator: "_", maxSplits: 1)
        guard parts.count == 2, parts[0].count == 4, let version = Int(parts[0]), version > 0, isIdentifier(String(parts[1]))
        else { fail("sql/\(schema)/\(file): name must be NNNN_name.sql (four digits, then a lowercase name)") }
        guard seen.insert(version).inserted else { fail("sql/\(schema): version \(version) appears twice") }
        guard let text = try? String(contentsOf: sqlDir.appendingPathComponent(schema).appendingPathComponent(file), encoding: .utf8)
        else { fail("sql/\(schema)/\(file): not readable as UTF-8") }
        // A kind line, when present, must name a kind: a typo must not make a file contract silently.
        let first = text.prefix { $0 != "\n" }.split(separator: " ")
        if first.count >= 2, first[0] == "--", first[1].hasPrefix("regent:"), !["regent:expand", "regent:contract", "regent:breaking"].contains(first[1]) {
            fail("sql/\(schema)/\(file): first line says \(first[1]); the kinds are regent:expand, regent:contract and regent:breaking")
        }
        entries.append((schema, version, String(parts[1]), text))
    }
    // Function files: the live definition of each function, one home per function.
    let functionsDir = sqlDir.appendingPathComponent(schema).appendingPathComponent("functions")
    for file in ((try? fm.contentsOfDirectory(atPath: functionsDir.path)) ?? []).sorted() where file.hasSuffix(".sql") {
        let stem = String(file.dropLast(4))
        guard isIdentifier(stem) else { fail("sql/\(schema)/functions/\(file): name must be a lowercase identifier (the function's name)") }
        guard let text = try? String(contentsOf: functionsDir.appendingPathComponent(file), encoding: .utf8)
        else { fail("sql/\(schema)/functions/\(file): not readable as UTF-8") }
        functionFiles.append((schema, stem, text))
    }
    // Online index files: built by the leader with CREATE INDEX CONCURRENTLY, outside any
    // migration's transaction (an index on a hot table must not block its traffic while it builds).
    let indexesDir = sqlDir.appendingPathComponent(schema).appendingPathComponent("indexes")
    for file in ((try? fm.contentsOfDirectory(atPath: indexesDir.path)) ?? []).sorted() where file.hasSuffix(".sql") {
        let stem = String(file.dropLast(4))
        guard isIdentifier(stem) else { fail("sql/\(schema)/indexes/\(file): name must be a lowercase identifier (the index's name)") }
        guard let text = try? String(contentsOf: indexesDir.appendingPathComponent(file), encoding: .utf8)
        else { fail("sql/\(schema)/indexes/\(file): not readable as UTF-8") }
        let statement = text.split(separator: "\n").filter { !$0.hasPrefix("--") }.joined(separator: " ")
            .split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ").trimmingCharacters(in: CharacterSet(charactersIn: "; "))
        let prefix = "CREATE INDEX CONCURRENTLY IF NOT EXISTS \(stem) ON \(schema)."
        guard statement.hasPrefix(prefix), !statement.contains(";") else {
            fail("sql/\(schema)/indexes/\(file): must hold one statement, `\(prefix)<table> (...)` (comments aside)")
        }
        let table = String(statement.dropFirst(prefix.count).prefix { $0 != " " && $0 != "(" })
        guard isIdentifier(table) else { fail("sql/\(schema)/indexes/\(file): cannot read the table name") }
        indexFiles.append((schema, stem, table, statement))
    }
    let versions = seen.sorted()
    if versions != Array(1...max(1, versions.count)) && !versions.isEmpty {
        fail("sql/\(schema): versions must be 1, 2, 3 … without gaps (found \(versions))")
    }
}

func literal(_ s: String) -> String {
    // A raw string literal with enough '#' that no content can close it.
    var hashes = "#"
    while s.contains("\"" + hashes) { hashes += "#" }
    return hashes + "\"\"\"\n" + s + "\n\"\"\"" + hashes
}

var out = "// Generated by the EmbedSQL plugin from sql/. Do not edit.\n\n"
out += "enum EmbeddedMigrations {\n"
out += "    static let files: [(schema: String, version: Int, name: String, sql: String)] = [\n"
for e in entries {
    out += "        (\"\(e.schema)\", \(e.version), \"\(e.name)\", \(literal(e.sql))),\n"
}
out += "    ]\n"
out += "    static let functions: [(schema: String, name: String, sql: String)] = [\n"
for f in functionFiles {
    out += "        (\"\(f.schema)\", \"\(f.name)\", \(literal(f.sql))),\n"
}
out += "    ]\n"
out += "    static let indexes: [(schema: String, name: String, table: String, sql: String)] = [\n"
for i in indexFiles {
    out += "        (\"\(i.schema)\", \"\(i.name)\", \"\(i.table)\", \(literal(i.sql))),\n"
}
out += "    ]\n}\n"
do {
    try out.write(to: output, atomically: true, encoding: .utf8)
} catch {
    fail("cannot write \(output.path): \(error)")
}
