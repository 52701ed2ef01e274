/// A clock reading tests set by hand.
public struct TestInstant: InstantProtocol {
    public init(offset: Duration) { self.offset = offset }
    public var offset: Duration
    public func advanced(by duration: Duration) -> TestInstant { TestInstant(offset: offset + duration) }
    public func duration(to other: TestInstant) -> Duration { other.offset - offset }
    public static func < (a: TestInstant, b: TestInstant) -> Bool { a.offset < b.offset }
}
