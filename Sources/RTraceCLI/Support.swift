import ArgumentParser
import Foundation
import RTrace

/// Buffered text output to standard output (or a file), quiet when a downstream `head` closes the pipe.
final class TextOutput {
    private let sink: OutputSink
    private var buffer: [UInt8] = []

    init(path: String = "-") throws {
        sink = try OutputSink(path: path)
        buffer.reserveCapacity(1 << 16)
    }

    func write(_ s: String) throws {
        buffer.append(contentsOf: s.utf8)
        if buffer.count >= 1 << 16 { try flush() }
    }

    func line(_ s: String) throws { try write(s + "\n") }

    /// Writes bytes already formatted (see ``ByteText``).
    func write(bytes: [UInt8]) throws {
        buffer.append(contentsOf: bytes)
        if buffer.count >= 1 << 16 { try flush() }
    }

    func flush() throws {
        guard !buffer.isEmpty else { return }
        do { try sink.write(buffer) } catch where error.message.contains("closed the pipe") {
            throw ExitCode.success
        }
        buffer.removeAll(keepingCapacity: true)
    }

    deinit { try? flush() }
}

/// Turns library errors into a one-line message and exit status 1 (argument errors keep 64).
func runReportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as TraceError {
        FileHandle.standardError.write(Data("rtrace: error: \(e.description)\n".utf8))
        throw ExitCode.failure
    }
}

/// Writes a line to standard error.
func note(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

/// JSON text of a value built from dictionaries, arrays, strings and numbers (keys sorted, stable).
func jsonText(_ v: Any, pretty: Bool = false) -> String {
    var opts: JSONSerialization.WritingOptions = [.sortedKeys, .withoutEscapingSlashes]
    if pretty { opts.insert(.prettyPrinted) }
    let d = try! JSONSerialization.data(withJSONObject: v, options: opts)
    return String(decoding: d, as: UTF8.self)
}


/// Parses a layer map: `0,1,5-9` (decoder indices).
func parseLayerList(_ s: String) throws -> [Int] {
    var out: [Int] = []
    for part in s.split(separator: ",") {
        let p = part.split(separator: "-", maxSplits: 1)
        guard let a = Int(p[0].trimmingCharacters(in: .whitespaces)) else { throw ValidationError("bad layer '\(part)' in '\(s)'") }
        if p.count == 2 {
            guard let b = Int(p[1].trimmingCharacters(in: .whitespaces)), b >= a else { throw ValidationError("bad layer range '\(part)'") }
            out += Array(a...b)
        } else {
            out.append(a)
        }
    }
    return out
}

extension EngineInfo.Role: ExpressibleByArgument {}

