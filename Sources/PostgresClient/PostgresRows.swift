/// The complete result of one statement: its columns, rows (text format) and affected-row count.
public struct PostgresRows: Sendable, RandomAccessCollection {
    public let columns: [String]
    public let typeOIDs: [UInt32]
    let values: [[String?]]
    /// Rows changed by INSERT/UPDATE/DELETE, or returned by SELECT.
    public let affectedRows: Int

    init(columns: [String], typeOIDs: [UInt32], values: [[String?]], affectedRows: Int) {
        self.columns = columns
        self.typeOIDs = typeOIDs
        self.values = values
        self.affectedRows = affectedRows
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { values.count }
    public subscript(position: Int) -> PostgresRow {
        PostgresRow(rows: self, index: position)
    }

    func columnIndex(_ name: String) -> Int? { columns.firstIndex(of: name) }

    /// The only row; throws when there is none or more than one.
    public func single() throws(PostgresError) -> PostgresRow {
        guard values.count == 1 else {
            throw PostgresError(.decoding, "expected exactly one row, got \(values.count)")
        }
        return self[0]
    }
}

/// One row of a result.
public struct PostgresRow: Sendable {
    let rows: PostgresRows
    let index: Int

    /// Decodes column `name`; a NULL or a type mismatch is an error that names the column.
    public func decode<T: PostgresDecodable>(_ name: String, as type: T.Type = T.self) throws(PostgresError) -> T {
        guard let v = try decodeOptional(name, as: T.self) else {
            throw PostgresError(.decoding, "column \(name) is NULL but \(T.self) was expected")
        }
        return v
    }

    /// Decodes column `name`, giving nil for NULL.
    public func decodeOptional<T: PostgresDecodable>(_ name: String, as type: T.Type = T.self) throws(PostgresError) -> T? {
        guard let column = rows.columnIndex(name) else {
            throw PostgresError(.decoding, "no column \(name) in result (columns: \(rows.columns.joined(separator: ", ")))")
        }
        return try decodeOptional(at: column, as: T.self)
    }

    /// Decodes the column at `column` (0-based).
    public func decode<T: PostgresDecodable>(at column: Int, as type: T.Type = T.self) throws(PostgresError) -> T {
        guard let v = try decodeOptional(at: column, as: T.self) else {
            throw PostgresError(.decoding, "column \(column) is NULL but \(T.self) was expected")
        }
        return v
    }

    public func decodeOptional<T: PostgresDecodable>(at column: Int, as type: T.Type = T.self) throws(PostgresError) -> T? {
        guard column >= 0, column < rows.columns.count else {
            throw PostgresError(.decoding, "column index \(column) out of range (\(rows.columns.count) columns)")
        }
        guard let text = rows.values[index][column] else { return nil }
        do {
            return try T(postgresText: text, typeOID: rows.typeOIDs[column])
        } catch {
            var e = error
            e.message = "column \(rows.columns[column]): " + e.message
            throw e
        }
    }

    /// True when the column holds NULL.
    public func isNull(_ name: String) -> Bool {
        guard let column = rows.columnIndex(name) else { return true }
        return rows.values[index][column] == nil
    }
}
