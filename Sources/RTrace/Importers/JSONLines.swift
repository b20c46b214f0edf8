import Foundation

/// A JSON-lines input: one JSON value per non-empty line, parsed on demand, errors naming the line.
public struct JSONLines: Sendable {
    /// The file name used in errors.
    public let file: String
    private let bytes: [UInt8]

    /// Reads all of `path` (`-` = standard input).
    public init(path: String) throws(TraceError) {
        let s: InputSource
        do { s = try InputSource(path: path) } catch { throw error.inFile(path) }
        var b: [UInt8] = []
        while true {
            let chunk = try s.read(upTo: 1 << 20)
            if chunk.isEmpty { break }
            b += chunk
        }
        self.init(bytes: b, file: path)
    }

    public init(bytes: [UInt8], file: String) {
        self.bytes = bytes
        self.file = file
    }

    /// Calls `body` with each line's 1-based number, byte offset and raw text (blank lines skipped).
    public func forEachLine(_ body: (_ line: Int, _ offset: Int, _ text: ArraySlice<UInt8>) throws -> Void) rethrows {
        var start = 0, line = 1
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            let text = bytes[start..<end]
            if text.contains(where: { $0 != 0x20 && $0 != 0x09 && $0 != 0x0D }) { try body(line, start, text) }
            start = end + 1
            line += 1
        }
    }

    /// Parses one line as JSON (fragments allowed: a bare string is a value).
    public func parse(_ text: ArraySlice<UInt8>, line: Int, offset: Int) throws(TraceError) -> Any {
        do {
            return try JSONSerialization.jsonObject(with: Data(text), options: [.fragmentsAllowed])
        } catch {
            throw TraceError(.invalidInput, "line \(line): not valid JSON (\(error.localizedDescription))", file: file, offset: offset)
        }
    }
}

/// Typed access to a decoded JSON object, errors naming the field.
struct JSONFields {
    let object: [String: Any]
    let what: String

    func has(_ key: String) -> Bool { object[key] != nil && !(object[key] is NSNull) }

    func int(_ key: String) throws(TraceError) -> Int? {
        guard has(key) else { return nil }
        guard let n = object[key] as? NSNumber, let i = Int(exactly: n.doubleValue) else {
            throw TraceError(.invalidInput, "\(what): \"\(key)\" is \(object[key]!), expected an integer")
        }
        return i
    }

    func double(_ key: String) throws(TraceError) -> Double? {
        guard has(key) else { return nil }
        guard let n = object[key] as? NSNumber else {
            throw TraceError(.invalidInput, "\(what): \"\(key)\" is \(object[key]!), expected a number")
        }
        return n.doubleValue
    }

    /// A string, or a number written as text (request ids are sometimes numbers).
    func string(_ key: String) throws(TraceError) -> String? {
        guard has(key) else { return nil }
        if let s = object[key] as? String { return s }
        if let n = object[key] as? NSNumber { return n.stringValue }
        throw TraceError(.invalidInput, "\(what): \"\(key)\" is \(object[key]!), expected a string")
    }

    func ints(_ key: String) throws(TraceError) -> [Int32]? {
        guard has(key) else { return nil }
        let a = try EngineArrays.decode(object[key]!, rawDType: "int32", what: "\(what): \"\(key)\"")
        var out: [Int32] = []
        out.reserveCapacity(a.values.count)
        for v in a.values {
            guard let x = Int32(exactly: v) else { throw TraceError(.invalidInput, "\(what): \"\(key)\" holds \(v), not an int32 token id") }
            out.append(x)
        }
        return out
    }

    func floats(_ key: String) throws(TraceError) -> [Float]? {
        guard has(key) else { return nil }
        guard let a = object[key] as? [Any] else { throw TraceError(.invalidInput, "\(what): \"\(key)\" is not a list of numbers") }
        var out: [Float] = []
        for (i, x) in a.enumerated() {
            guard let n = x as? NSNumber else { throw TraceError(.invalidInput, "\(what): \"\(key)\"[\(i)] is \(x), not a number") }
            out.append(n.floatValue)
        }
        return out
    }

    func object(_ key: String) throws(TraceError) -> JSONFields? {
        guard has(key) else { return nil }
        guard let o = object[key] as? [String: Any] else { throw TraceError(.invalidInput, "\(what): \"\(key)\" is not an object") }
        return JSONFields(object: o, what: "\(what).\(key)")
    }
}
