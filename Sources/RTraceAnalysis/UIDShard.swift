import RTrace

/// Part `index` of `count` of the uid space: the uids whose CRC-32 (``TraceRecord/uidHash(_:)``) is
/// `index` modulo `count`.
///
/// A comparison split this way (`rtrace diff --partial --uid-shard i/N`, i = 0 … N−1) puts both
/// sides of every sequence in the same part, so the parts' partial results merge to the result of
/// the whole. Python computes the same part as `zlib.crc32(uid.encode()) % N`.
public struct UIDShard: Sendable, Equatable, Hashable, Codable {
    /// Which part, 0 ≤ index < count.
    public var index: Int
    /// How many parts.
    public var count: Int

    /// The whole uid space (part 0 of 1).
    public static let all = UIDShard(checkedIndex: 0, count: 1)

    private init(checkedIndex: Int, count: Int) {
        index = checkedIndex
        self.count = count
    }

    /// Part `index` of `count`; throws unless 0 ≤ index < count < 2³².
    public init(index: Int, count: Int) throws(TraceError) {
        guard count >= 1, count <= Int(UInt32.max), index >= 0, index < count else {
            throw TraceError(.invalidInput, "uid shard \(index)/\(count): need 0 ≤ i < N, N ≥ 1")
        }
        self.init(checkedIndex: index, count: count)
    }

    /// Parses `i/N`.
    public init(parsing s: String) throws(TraceError) {
        let p = s.split(separator: "/", omittingEmptySubsequences: false)
        guard p.count == 2, let i = Int(p[0]), let n = Int(p[1]) else {
            throw TraceError(.invalidInput, "--uid-shard expects i/N (for example 3/8), found \(s)")
        }
        try self.init(index: i, count: n)
    }

    /// Whether `uid` is in this part.
    @inline(__always)
    public func contains(_ uid: String) -> Bool {
        count == 1 || Int(TraceRecord.uidHash(uid) % UInt32(truncatingIfNeeded: count)) == index
    }

    /// `i/N`.
    public var text: String { "\(index)/\(count)" }
}
