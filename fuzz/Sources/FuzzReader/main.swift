// libFuzzer target over the rtrace reader and checker (issue #6).
//
// Every input runs twice: as given, and with every CRC-32 it holds recomputed ("fixed up"), so that
// mutations get past the checksums and reach the header JSON, the chunk directory, the codecs
// (raw, deflate, byte-shuffle), the id coding, record assembly and the index. Each version is read
// as a regular file and as a pipe: readAll, summary, chunkHeaders, random access through the index,
// and `check` (with --salvage to /dev/null for one input length in four: the writer is costly). Errors are expected; a crash, a sanitizer report, an
// error that is not a TraceError, or a `check` that calls a file clean when reading it fails, is a bug.
//
// Build and run: `make fuzz FUZZ_SECONDS=N` (Makefile). With RTRACE_FUZZ_SEEDS=DIR set, the binary
// writes its seed traces to DIR and exits (`make fuzz-seeds`).
import Foundation
import RTrace

/// Runs every read path over `bytes`.
func exercise(_ bytes: [UInt8]) {
    var readOK: Int? = nil
    // As a regular file: every operation on one reader (each seeks back to the first frame).
    if let r = try? TraceReader(bytes: bytes, name: "fuzz", seekable: true) {
        r.threads = 1
        do { readOK = try r.readAll().count } catch { expectTraceError(error) }
        do { _ = try r.summary() } catch { expectTraceError(error) }
        do { _ = try r.chunkHeaders() } catch { expectTraceError(error) }
        if let ix = r.index {
            for o in Set([0, ix.records.count - 1]) where o >= 0 && o < ix.records.count {
                do { _ = try r.record(ordinal: o) } catch { expectTraceError(error) }
            }
            if let last = ix.records.last {
                do { _ = try r.record(uid: last.uid) } catch { expectTraceError(error) }
            }
        }
    }
    // As a pipe: frame by frame, no index.
    if let r = try? TraceReader(bytes: bytes, name: "fuzz", seekable: false) {
        r.threads = 1
        do { _ = try r.readAll() } catch { expectTraceError(error) }
    }
    for seekable in [true, false] {
        do {
            let report = try TraceChecker.check(
                source: InputSource(bytes: bytes, name: "fuzz", seekable: seekable),
                salvage: seekable && bytes.count % 4 == 0 ? "/dev/null" : nil)
            // A file `check` calls clean and complete must read, with the same number of records.
            if seekable && report.clean && report.complete {
                guard let n = readOK else { fatalError("check says clean and complete, the reader fails") }
                guard n == report.records else { fatalError("check counts \(report.records) records, the reader \(n)") }
            }
        } catch { expectTraceError(error) }
    }
}

func expectTraceError(_ error: any Error) {
    if !(error is TraceError) { fatalError("an error that is not a TraceError: \(error)") }
}

/// The input with every CRC-32 recomputed, where the structure can be followed that far.
func fixChecksums(_ input: [UInt8]) -> [UInt8] {
    var b = input
    func u32(_ i: Int) -> Int { Int(b[i]) | Int(b[i + 1]) << 8 | Int(b[i + 2]) << 16 | Int(b[i + 3]) << 24 }
    func u64(_ i: Int) -> UInt64 { UInt64(u32(i)) | UInt64(u32(i + 4)) << 32 }
    func put32(_ v: UInt32, _ i: Int) { for k in 0..<4 { b[i + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(k))) } }
    guard b.count >= 20 else { return b }
    let n = u32(12)
    guard n <= b.count - 20 else { return b }
    put32(crc32(b[0..<16 + n]), 16 + n)
    var pos = 20 + n
    while pos + 4 <= b.count {
        if b[pos..<pos + 4].elementsEqual("RTCK".utf8) {
            guard pos + 24 <= b.count else { break }
            let c = u32(pos + 4)
            guard (1...64).contains(c), pos + 28 + 16 * c <= b.count else { break }
            let hl = 28 + 16 * c
            var off = pos + hl
            var fits = true
            for i in 0..<c {
                let e = pos + 24 + 16 * i
                let stored = u32(e + 8)
                guard off + stored <= b.count else { fits = false; break }
                put32(crc32(b[off..<off + stored]), e + 12)
                off += stored
            }
            if fits {
                let payload = UInt64(off - pos - hl)
                put32(UInt32(truncatingIfNeeded: payload), pos + 16)
                put32(UInt32(truncatingIfNeeded: payload >> 32), pos + 20)
            }
            put32(crc32(b[pos..<pos + hl - 4]), pos + hl - 4)
            guard fits else { break }
            pos = off
        } else if b[pos..<pos + 4].elementsEqual("RTIX".utf8) {
            guard pos + 20 <= b.count else { break }  // the frame header and its CRC
            let body = u64(pos + 8)
            guard body <= UInt64(b.count - pos - 20) else { break }
            let end = pos + 16 + Int(body)
            put32(crc32(b[pos..<end]), end)
            pos = end + 4
            if pos + 32 <= b.count { put32(crc32(b[pos..<pos + 20]), pos + 20) }
            break
        } else {
            break
        }
    }
    return b
}

let crcTable: [UInt32] = (0..<256).map { i in
    var c = UInt32(i)
    for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    return c
}

func crc32(_ s: ArraySlice<UInt8>) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for x in s { c = crcTable[Int((c ^ UInt32(x)) & 0xFF)] ^ (c >> 8) }
    return c ^ 0xFFFF_FFFF
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size > 0 ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    exercise(bytes)
    let fixed = fixChecksums(bytes)
    if fixed != bytes { exercise(fixed) }
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInit(_ argc: UnsafeMutablePointer<CInt>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> CInt {
    if let dir = ProcessInfo.processInfo.environment["RTRACE_FUZZ_SEEDS"] {
        do { try writeSeeds(to: dir) } catch { fatalError("writing seeds: \(error)") }
        exit(0)
    }
    return 0
}
