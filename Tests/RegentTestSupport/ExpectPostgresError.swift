import PostgresClient
import Testing

/// Expects `body` to throw a ``PostgresError`` with `code` (and `sqlState`, when given), not
/// merely some error; returns it for further checks.
@discardableResult
public func expectPostgresError(
    _ code: PostgresError.Code, sqlState: String? = nil, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws -> Void
) async -> PostgresError? {
    do {
        try await body()
    } catch {
        return judge(error, code, sqlState, sourceLocation)
    }
    Issue.record("expected a PostgresError \(code), nothing was thrown", sourceLocation: sourceLocation)
    return nil
}

/// The same for a body that does not suspend.
@discardableResult
public func expectPostgresError(
    _ code: PostgresError.Code, sqlState: String? = nil, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) -> PostgresError? {
    do {
        try body()
    } catch {
        return judge(error, code, sqlState, sourceLocation)
    }
    Issue.record("expected a PostgresError \(code), nothing was thrown", sourceLocation: sourceLocation)
    return nil
}

private func judge(_ error: any Error, _ code: PostgresError.Code, _ sqlState: String?, _ sourceLocation: SourceLocation) -> PostgresError? {
    guard let error = error as? PostgresError else {
        Issue.record("expected a PostgresError \(code), got \(error)", sourceLocation: sourceLocation)
        return nil
    }
    #expect(error.code == code, "expected \(code), got \(error)", sourceLocation: sourceLocation)
    if let sqlState { #expect(error.sqlState == sqlState, "expected SQLSTATE \(sqlState), got \(error)", sourceLocation: sourceLocation) }
    return error
}
