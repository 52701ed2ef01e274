import PostgresClient

/// Parses operator durations: `250ms`, `3s`, `1.5s`, `1m`, `2h` (a bare number is refused:
/// the unit must be explicit).
public func parseDuration(_ text: String, flag: String) throws(RegentError) -> Duration {
    let trimmed = text.trimmingCharactersInWhitespace()
    let units: [(String, Double)] = [("ms", 1e-3), ("us", 1e-6), ("s", 1), ("m", 60), ("h", 3600)]
    for (suffix, scale) in units where trimmed.hasSuffix(suffix) {
        let number = trimmed.dropLast(suffix.count)
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
            let value = Double(number), value.isFinite, value > 0, value * scale <= 86_400 * 7
        else { break }
        return .microseconds(Int64((value * scale * 1e6).rounded()))
    }
    throw RegentError(
        .invalidInput, "invalid duration \(quoted(text)) for \(flag): use a positive number with a unit, e.g. 250ms, 3s, 1m")
}

extension Duration {
    /// Milliseconds as a Double, for logs and figures.
    public var milliseconds: Double {
        Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15
    }
}
