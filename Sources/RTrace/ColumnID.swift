/// The column ids of a chunk (spec/format.md §5).
public enum ColumnID: UInt16, Sendable, CaseIterable {
    case pieces = 1
    case records = 2
    case tokens = 3
    case logprobs = 4
    case missing = 8
    case idSlots = 16
    case idNew = 17
    case weights = 18
    case logits = 19

    /// The name `rtrace info` prints.
    public var name: String {
        switch self {
        case .pieces: "pieces"
        case .records: "records"
        case .tokens: "tokens"
        case .logprobs: "logprobs"
        case .missing: "missing"
        case .idSlots: "topk_ids.slots"
        case .idNew: "topk_ids.new"
        case .weights: "topk_weights"
        case .logits: "router_logits"
        }
    }

    /// Ids below this are reserved for the specification; a reader rejects unknown ones.
    static let firstExtension: UInt16 = 32
}

/// How a column's bytes are stored.
public enum Codec: UInt8, Sendable {
    case raw = 0
    case deflate = 1
}

/// One entry of a chunk's column directory.
public struct ColumnEntry: Sendable, Equatable {
    public var id: UInt16
    public var codec: UInt8
    public var transform: UInt8
    public var rawLength: Int
    public var storedLength: Int
    public var crc: UInt32
    /// Byte offset of the stored bytes within the chunk frame.
    public var offsetInFrame: Int
}
