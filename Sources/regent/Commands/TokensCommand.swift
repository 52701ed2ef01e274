import ArgumentParser
import Foundation
import PostgresClient
import RegentCore

struct TokensCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokens",
        abstract: "Create, list and revoke API tokens (the auth module's auth.tokens).",
        discussion: """
            A token is shown once, when it is created, alone on the last line of the output; \
            only a SHA-256 of its secret is stored. Roles: read (GET routes), worker (read plus \
            worker endpoints and event publishing), admin (everything).
            """,
        subcommands: [Create.self, List.self, Revoke.self]
    )

    /// A connection for the length of `body`, closed (awaited) after it, on which the engine
    /// and auth schemas are current (pending files applied under the migration lock, as
    /// `regent migrate` would).
    static func withConnection<T>(_ database: DatabaseOptions, _ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await PostgresConnection.withConnection(try database.configuration()) { conn in
            let runner = MigrationRunner(appliedBy: cliActor)
            _ = try await runner.migrate(on: conn, schemas: ["engine"])
            try await ModuleRegistry().seed(on: conn)
            guard try await ModuleRegistry().enabledSchemas(on: conn).contains("auth") else {
                throw ValidationError("the auth module is disabled: enable it first (regent modules enable auth)")
            }
            _ = try await runner.migrate(on: conn, schemas: ["auth"])
            return try await body(conn)
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a token and print it once.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Option(help: "admin, worker or read.") var role: String
        @Option(help: "A name for the token (letters, digits, . _ -; unique among live tokens).") var name: String

        func validate() throws {
            do {
                _ = try TokenRole(parsing: role)
                try TokenStore.validateName(name)
            } catch {
                throw ValidationError(error.description)
            }
        }

        func run() async throws {
            try log.bootstrap()
            try await TokensCommand.withConnection(database) { conn in
                let (record, token) = try await TokenStore().create(name: name, role: try TokenRole(parsing: role), actor: cliActor, on: conn)
                print("created token \(record.name) (role \(record.role.rawValue), id \(record.tokenID)); it is shown only now:")
                print(token)
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tokens (never their secrets).")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Flag(help: "Include revoked tokens.") var all = false
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try log.bootstrap()
            try await TokensCommand.withConnection(database) { conn in
                let tokens = try await TokenStore().list(includeRevoked: all, on: conn)
                if json { return try printJSON(tokens) }
                let f = ISO8601DateFormatter()
                print(table(["name", "role", "token id", "created", "last used", "revoked"], tokens.map {
                    [$0.name, $0.role.rawValue, $0.tokenID, f.string(from: $0.createdAt), $0.lastUsedAt.map(f.string) ?? "-",
                     $0.revokedAt.map(f.string) ?? "-"]
                }))
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a live token by name or token id.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var log: LogOptions
        @Argument(help: "The token's name or id.") var token: String

        func validate() throws {
            guard !token.isEmpty, token.utf8.count <= 63, !token.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
                throw ValidationError("invalid token name or id \(SQLIdentifier.printable(token))")
            }
        }

        func run() async throws {
            try log.bootstrap()
            try await TokensCommand.withConnection(database) { conn in
                guard try await TokenStore().revoke(token, actor: cliActor, on: conn) else {
                    throw ValidationError("no live token named or with id \(SQLIdentifier.printable(token))")
                }
                print("revoked \(token)")
            }
        }
    }
}
