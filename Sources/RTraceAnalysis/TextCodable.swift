/// A value whose JSON form is one string, its lossless ``text`` (JSON has no 128-bit integers, and exact
/// sums must travel between processes bit for bit).
public protocol TextCodable: Codable {
    /// The lossless text of the value.
    var text: String { get }
    /// Parses ``text``; nil when `text` is not one.
    init?(text: String)
    /// What a valid text looks like, for the decoding error.
    static var textForm: String { get }
}

extension TextCodable {
    /// Decodes ``text``, naming the expected form when the string is not one.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        let s = try c.decode(String.self)
        guard let v = Self(text: s) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "expected \(Self.textForm), found \(s)")
        }
        self = v
    }

    /// Encodes ``text``.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(text)
    }
}
