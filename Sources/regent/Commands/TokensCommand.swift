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
        @Option(help: "Scope a worker token to this namespace: it registers, claims, enqueues, cancels and starts runs only there.")
        var namespace: String?
        @Option(help: "With --namespace: only these lanes of it (repeat the flag).") var lane: [String] = []

        func scope() throws -> TokenScope? {
            guard let namespace else {
                if !lane.isEmpty { throw RegentError(.invalidInput, "--lane needs --namespace (a lane belongs to a namespace)") }
                return nil
            }
            return try TokenScope(namespace: try Namespace(namespace), lanes: lane.isEmpty ? nil : try lane.map { try Lane($0) })
        }

        func validate() throws {
            do {
                let role = try TokenRole(parsing: role)
                try TokenStore.validateName(name)
                if try scope() != nil, role != .worker { throw RegentError(.invalidInput, "only worker tokens can be scoped (--namespace, --lane)") }
            } catch {
                throw ValidationError("\(error)")
            }
        }

        func run() async throws {
            try log.bootstrap()
            try await TokensCommand.withConnection(database) { conn in
                let (record, token) = try await TokenStore().create(
                    name: name, role: try TokenRole(parsing: role), scope: try scope(), actor: cliActor, on: conn)
                let scoped = record.scope.map { s in
                    ", scoped to namespace \(s.namespace)" + (s.lanes.map { ", lanes " + $0.map(\.value).joined(separator: ",") } ?? "")
                } ?? ""
                print("created token \(record.name) (role \(record.role.rawValue)\(scoped), id \(record.tokenID)); it is shown only now:")
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
                print(table(["name", "role", "scope", "token id", "created", "last used", "revoked"], tokens.map {
                    [$0.name, $0.role.rawValue, $0.scope.map { s in s.namespace.value + (s.lanes.map { ":" + $0.map(\.value).joined(separator: ",") } ?? "") } ?? "-", $0.tokenID, f.string(from: $0.createdAt), $0.lastUsedAt.map(f.string) ?? "-",
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
