import CivilTime
import Foundation
@testable import RegentWorker
import Testing

/// JSONValue as the SDK uses it, and the RFC 3339 reader it shares with the libpq client (CivilTime) (the worker's hot path does
/// without Foundation's parsers): the same answers as Foundation, and clear refusals.
@Suite("RegentWorker's JSON and instants")
struct WorkerJSONTests {
    /// The worker reads answers with the server's own StrictJSON; JSONValue's Codable side (for
    /// handlers' typed inputs and outputs) agrees with it, and what it writes reads back the same.
    @Test func codableAndTheStrictReaderAgree() throws {
        let texts = [
            #"{"a":1,"b":[true,false,null],"c":{"d":"e\"f\\g\n\t\u00e9\ud83d\ude00","e":-0.5},"f":9223372036854775807,"g":1.5,"h":""}"#,
            #"[]"#, #"{}"#, #"  "x"  "#, #"0"#, #"-12"#, #"[[[[1]]]]"#, #""\/\b\f\r""#,
        ]
        for text in texts {
            let strict = try StrictJSON.parse(Array(text.utf8))
            let foundation = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
            #expect(strict == foundation, "\(text)")
            #expect(try StrictJSON.parse(Array(strict.text.utf8)) == strict, "\(text)")
            #expect(try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(strict)) == strict, "\(text)")
        }
        struct Order: Codable, Equatable { let id: Int; let items: [String]; let note: String? }
        let order = Order(id: 7, items: ["tea", "cups"], note: nil)
        let value = try JSONValue(encoding: order)
        #expect(value["id"] == 7 && value["items"]?.arrayValue?.count == 2)
        #expect(try value.decode(as: Order.self) == order)
        #expect(throws: DecodingError.self) { try JSONValue.object(["id": "seven"]).decode(as: Order.self) }
    }

    @Test func readsTheAPIsInstantsAsFoundationDoes() throws {
        for text in ["2026-12-06T19:26:12.851662Z", "2026-12-06T19:26:12Z", "2024-02-29T00:00:00.5Z", "1999-12-31T23:59:59.999+02:00",
                     "2026-01-01T00:00:00-05:30", "1970-01-01T00:00:00Z"] {
            let fast = try #require(Timestamp.parse(text, requireZone: true), "\(text)")
            let foundation = try Date(text, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: text.contains(".")).timeZone(separator: .colon))
            #expect(abs(fast.timeIntervalSince(foundation)) < 0.001, "\(text): \(fast) vs \(foundation)")
        }
        for bad in ["2026-13-01T00:00:00Z", "2026-12-06 19:26", "2026-12-06T19:26:12", "2026-12-06T19:26:12.Z", "yesterday", "2026-12-06T19:26:12Zjunk"] {
            #expect(Timestamp.parse(bad, requireZone: true) == nil, "\(bad)")
        }
    }
}
