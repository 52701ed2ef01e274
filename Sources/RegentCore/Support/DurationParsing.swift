import PostgresClient

/// Parses operator durations: `250ms`, `3s`, `1.5s`, `1m`, `2h`, `7d` (a bare number is
/// refused: the unit must be explicit), at most `maximum` (7 days unless said).
public func parseDuration(_ text: String, flag: String, maximum: Duration = .seconds(86_400 * 7)) throws(RegentError) -> Duration {
    let trimmed = text.trimmingCharactersInWhitespace()
    let units: [(String, Double)] = [("ms", 1e-3), ("us", 1e-6), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]
    let limit = Double(maximum.components.seconds)
    for (suffix, scale) in units where trimmed.hasSuffix(suffix) {
        let number = trimmed.dropLast(suffix.count)
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
            let value = Double(number), value.isFinite, value > 0, value * scale <= limit
        else { break }
        return .microseconds(Int64((value * scale * 1e6).rounded()))
    }
    throw RegentError(
        .invalidInput, "invalid duration \(quoted(text)) for \(flag): use a positive number with a unit, e.g. 250ms, 3s, 1m, 2h, 7d, at most \(limit >= 86_400 ? "\(Int(limit / 86_400))d" : "\(Int(limit))s")")
}

extension Duration {
    /// Milliseconds as a Double, for logs and figures.
    public var milliseconds: Double {
        Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15
    }
}
