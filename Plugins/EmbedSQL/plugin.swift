import Foundation
import PackagePlugin

/// Compiles every `sql/<schema>/NNNN_name.sql` file of the package, and every function file
/// `sql/<schema>/functions/<name>.sql`, into a Swift source, so a running `regent` binary
/// never needs the source tree.
@main
struct EmbedSQL: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: any Target) throws -> [Command] {
        let sqlDir = context.package.directoryURL.appending(path: "sql")
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedMigrations.swift")
        var inputs: [URL] = []
        let fm = FileManager.default
        if let schemas = try? fm.contentsOfDirectory(atPath: sqlDir.path) {
            // The directories too: a file added to one changes its modification time, so the
            // command runs again (the file list above is taken only when the build is planned).
            inputs.append(sqlDir)
            for schema in schemas.sorted() {
                let dir = sqlDir.appending(path: schema)
                inputs.append(dir)
                for file in (try? fm.contentsOfDirectory(atPath: dir.path)) ?? [] where file.hasSuffix(".sql") {
                    inputs.append(dir.appending(path: file))
                }
                // The schema's function files (sql/<schema>/functions/<name>.sql) and online
                // index files (sql/<schema>/indexes/<name>.sql).
                for sub in ["functions", "indexes"] {
                    let folder = dir.appending(path: sub)
                    guard fm.fileExists(atPath: folder.path) else { continue }
                    inputs.append(folder)
                    for file in (try? fm.contentsOfDirectory(atPath: folder.path)) ?? [] where file.hasSuffix(".sql") {
                        inputs.append(folder.appending(path: file))
                    }
                }
            }
        }
        return [
            .buildCommand(
                displayName: "Embedding \(inputs.filter { $0.pathExtension == "sql" }.count) SQL migration files",
                executable: try context.tool(named: "EmbedSQLTool").url,
                arguments: [sqlDir.path, output.path],
                inputFiles: inputs,
                outputFiles: [output]
            )
        ]
    }
}
