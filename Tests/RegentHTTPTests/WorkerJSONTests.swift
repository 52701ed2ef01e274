import Foundation
@testable import RegentWorker
import Testing

/// The SDK's own JSON parser and writer and its RFC 3339 reader (the worker's hot path does
/// without Foundation's coders): the same answers as Foundation, and clear refusals.
@Suite("RegentWorker's JSON and instants")
struct WorkerJSONTests {
    @Test func parsesWhatFoundationParsesAndWritesItBack() throws {
        let texts = [
            #"{"a":1,"b":[true,false,null],"c":{"d":"e\"f\\g\n\t\u00e9\ud83d\ude00","e":-0.5e3},"f":9223372036854775807,"g":1.5,"h":""}"#,
            #"[]"#, #"{}"#, #"  "x"  "#, #"0"#, #"-12"#, #"1e2"#, #"[[[[1]]]]"#, #""\/\b\f\r""#,
        ]
        for text in texts {
            let ours = try JSONValue.parse(Array(text.utf8))
            let foundation = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
            #expect(ours == foundation, "\(text)")
            // Written and read again: the same value.
            #expect(try JSONValue.parse(ours.bytes) == ours, "\(text)")
            // Foundation reads what we write.
            #expect(try JSONDecoder().decode(JSONValue.self, from: Data(ours.bytes)) == ours, "\(text)")
        }
        #expect(try JSONValue.parse(Array(#"{"s":"\u0001"}"#.utf8))["s"]?.string == "\u{1}")
        #expect(JSONValue.string("\u{1}\u{1F}").bytes == Array(#""\u0001\u001f""#.utf8))
    }

    @Test func refusesBrokenTextNamingTheOffset() {
        for (text, offset) in [
            (#"{"a":}"#, 5), (#"{"a" 1}"#, 5), (#"[1,]"#, 3), (#"tru"#, 3), (#""abc"#, 4), ("\"a\u{1}\"", 2), (#"01"#, 1), (#"1."#, 2),
            (#""\ud800""#, 7), (#""\x""#, 3), (#"{} x"#, 3), (#""#, 0),
        ] {
            do {
                _ = try JSONValue.parse(Array(text.utf8))
                Issue.record("\(text) must not parse")
            } catch let error as JSONParseError {
                #expect(error.offset == offset, "\(text): \(error)")
            } catch {
                Issue.record("\(text): \(error)")
            }
        }
        let deep = String(repeating: "[", count: 600) + String(repeating: "]", count: 600)
        #expect(throws: JSONParseError.self) { try JSONValue.parse(Array(deep.utf8)) }
    }

    @Test func readsTheAPIsInstantsAsFoundationDoes() throws {
        for text in ["2026-12-06T19:26:12.851662Z", "2026-12-06T19:26:12Z", "2024-02-29T00:00:00.5Z", "1999-12-31T23:59:59.999+02:00",
                     "2026-01-01T00:00:00-05:30", "1970-01-01T00:00:00Z"] {
            let fast = try #require(Lease.fastInstant(text), "\(text)")
            let foundation = try Date(text, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: text.contains(".")).timeZone(separator: .colon))
            #expect(abs(fast.timeIntervalSince(foundation)) < 0.001, "\(text): \(fast) vs \(foundation)")
        }
        for bad in ["2026-13-01T00:00:00Z", "2026-12-06 19:26", "2026-12-06T19:26:12", "2026-12-06T19:26:12.Z", "yesterday", "2026-12-06T19:26:12Zjunk"] {
            #expect(Lease.fastInstant(bad) == nil, "\(bad)")
        }
    }
}
