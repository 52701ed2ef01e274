import Foundation
import PackagePlugin

/// Compiles the browser console's files (`console/*.html|css|js|svg`) into a Swift source, so
/// a running `regent` binary serves the console without the source tree (as with the SQL).
@main
struct EmbedConsole: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: any Target) throws -> [Command] {
        let dir = context.package.directoryURL.appending(path: "console")
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedConsole.swift")
        // The directory too: a file added to it changes its modification time, so the command runs again.
        var inputs: [URL] = [dir]
        for file in (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? [] where !file.hasPrefix(".") {
            inputs.append(dir.appending(path: file))
        }
        return [
            .buildCommand(
                displayName: "Embedding \(inputs.count - 1) console files",
                executable: try context.tool(named: "EmbedConsoleTool").url,
                arguments: [dir.path, output.path],
                inputFiles: inputs,
                outputFiles: [output]
            )
        ]
    }
}
