import Foundation
import RTraceTestSupport
import Testing
@testable import RTrace

#if canImport(Glibc)
import Glibc
#endif

/// The error an operation threw, as a TraceError (nil when it succeeded; a failed test when it threw something else).
func traceError(_ body: () throws -> Void) -> TraceError? {
    do { try body() } catch {
        guard let e = error as? TraceError else { Issue.record("not a TraceError: \(error)"); return nil }
        return e
    }
    return nil
}

/// A small multi-chunk trace (every column, missing rows, records across chunks), written to memory.
func smallMultiChunkTrace(_ header: TraceHeader? = nil, chunkBytes: Int = 300) throws -> (bytes: [UInt8], records: [TraceRecord], index: TraceIndex, dataStart: Int) {
    let h = header ?? TraceHeader(
        engine: EngineInfo(name: "test", version: "1", role: .rollout),
        model: ModelGeometry(name: "tiny", numLayers: 3, numExperts: 12, topK: 2, layerMap: [0, 2]),
        columns: ColumnTypes(topkWeights: .bf16, routerLogits: nil, logprobs: true), policyVersion: 1,
        created: "2026-01-01T00:00:00Z")
    let recs = makeRecords(h, count: 8, seed: 21, maxRows: 12)
    let path = tempPath("small-multichunk.rtrace")
    let w = try TraceWriter(path: path, header: h, options: WriterOptions(chunkBytes: chunkBytes))
    for r in recs { try w.append(r) }
    try w.close()
    let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    let r = try TraceReader(bytes: bytes)
    return (bytes, recs, w.index, r.dataStart)
}

/// Rebuilds a complete file from a header and chunk frames, with a fresh index and trailer.
func assemble(header: [UInt8], frames: [[UInt8]], like old: TraceIndex) -> [UInt8] {
    var out = header
    var ix = old
    for (i, f) in frames.enumerated() {
        ix.chunks[i].offset = out.count
        ix.chunks[i].frameLength = f.count
        out += f
    }
    let frame = ix.encodeFrame()
    let at = out.count
    out += frame
    out += TraceIndex.trailer(indexOffset: at, indexLength: frame.count, chunkCount: ix.chunks.count)
    return out
}

/// The chunk frames of a complete file.
func frames(_ bytes: [UInt8], _ ix: TraceIndex) -> [[UInt8]] {
    ix.chunks.map { Array(bytes[$0.offset..<$0.offset + $0.frameLength]) }
}

/// A chunk frame with one more column (id, raw, no transform) at the end of its directory and payload.
func addingColumn(_ f: [UInt8], id: UInt16, data: [UInt8]) -> [UInt8] {
    let c = Int(loadU32(f, 4)), hl = 28 + 16 * c
    var h = ByteWriter()
    h.append(Array("RTCK".utf8)); h.u32(UInt32(c + 1)); h.append(Array(f[8..<16]))
    h.u64(loadU64(f, 16) + UInt64(data.count))
    h.append(Array(f[24..<24 + 16 * c]))
    h.u16(id); h.u8(0); h.u8(0); h.u32(UInt32(data.count)); h.u32(UInt32(data.count)); h.u32(Zlib.crc32(data))
    h.u32(Zlib.crc32(h.bytes))
    return h.bytes + Array(f[hl...]) + data
}

/// Re-computes a chunk frame's header CRC after its fixed part or directory was edited.
func resealChunkHeader(_ f: inout [UInt8]) {
    let hl = 28 + 16 * Int(loadU32(f, 4))
    storeU32(Zlib.crc32(Array(f[0..<hl - 4])), &f, hl - 4)
}

/// The file header (magic to header CRC) with different header JSON.
func fileHeader(json: [UInt8], major: UInt16 = 1) -> [UInt8] {
    var h = ByteWriter()
    h.append(TraceFile.magic); h.u16(major); h.u16(0); h.u32(UInt32(json.count)); h.append(json)
    h.u32(Zlib.crc32(h.bytes))
    return h.bytes
}

@Suite(.serialized) struct FaultTests {
    // MARK: Killed writers

    /// `rtrace import` killed with SIGKILL at random points: every chunk complete on disk is recovered in full.
    @Test(.enabled(if: binaryTestsEnabled, "no rtrace executable beside the tests (swift build --build-tests builds it)"))
    func sigkillAtRandomPointsLosesOnlyTheUnfinishedChunk() throws {
        let npz = "\(repoRoot)/samples/qwen3moe-L6-E32-k4/train_fp32.npz"
        let args = ["import", "--from", "npz", npz, "--engine", "t", "--role", "train", "--chunk-bytes", "3000", "-o"]
        // The reference: the same import, left to finish.
        let refPath = tempPath("kill-ref.rtrace")
        let ref = try Process.run(URL(fileURLWithPath: rtraceBinary), arguments: args + [refPath])
        ref.waitUntilExit()
        #expect(ref.terminationStatus == 0)
        let refBytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: refPath)))
        let refReader = try TraceReader(path: refPath)
        let ix = try #require(refReader.index)
        let all = try refReader.readAll()
        #expect(ix.chunks.count >= 40, "the reference should have many chunks, has \(ix.chunks.count)")
        var rng = SystemRandomNumberGenerator()
        var cuts: [Int] = []
        for trial in 0..<12 {
            // Kill once the file has grown past a random point of the data (the last trial: at once).
            let threshold = trial == 11 ? 0 : Int.random(in: refReader.dataStart..<refBytes.count, using: &rng)
            let path = tempPath("killed-\(trial).rtrace")
            try? FileManager.default.removeItem(atPath: path)
            let p = try Process.run(URL(fileURLWithPath: rtraceBinary), arguments: args + [path])
            var st = stat()
            let deadline = Date().addingTimeInterval(60)
            while p.isRunning && Date() < deadline {
                if stat(path, &st) == 0 && Int(st.st_size) >= threshold { break }
                usleep(100)
            }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            let bytes = [UInt8]((try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data())
            cuts.append(bytes.count)
            // Apart from the creation time in the header, what is on disk is a prefix of the finished file.
            let start = refReader.dataStart
            if bytes.count > start {
                #expect(bytes[start...].elementsEqual(refBytes[start..<bytes.count]), "trial \(trial): killed output is not a prefix")
            }
            guard bytes.count >= start else { continue }
            let complete = ix.chunks.filter { $0.offset + $0.frameLength <= bytes.count }.count
            let expected = ix.records.filter { $0.firstChunk + $0.chunkCount <= complete }.count
            let out = tempPath("killed-\(trial)-salvaged.rtrace")
            let report = try TraceChecker.check(path: path, salvage: out)
            #expect(report.records == expected, "trial \(trial): killed at \(bytes.count) of \(refBytes.count) bytes")
            let salvaged = try TraceReader(path: out).readAll()
            #expect(salvaged == Array(all.prefix(expected)), "trial \(trial): salvaged records differ")
            if bytes.count < refBytes.count { #expect(!report.clean) }
        }
        print("SIGKILL trials: killed at bytes \(cuts.sorted()) of \(refBytes.count)")
    }

    // MARK: Full disk, closed pipe

    @Test func fullDiskIsAClearError() throws {
        let e = traceError {
            let w = try TraceWriter(path: "/dev/full", header: fullHeader())
            try w.append(makeRecords(fullHeader(), count: 1, seed: 1, maxRows: 3)[0])
            try w.close()
        }
        let err = try #require(e)
        #expect(err.kind == .io)
        #expect(err.file == "/dev/full")
        #expect(err.description.contains("No space left on device"), "\(err)")
    }

    @Test func closedPipeIsAClearError() throws {
        signal(SIGPIPE, SIG_IGN)
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[1]) }
        let h = fullHeader()
        let w = try TraceWriter(sink: OutputSink(fileDescriptor: fds[1], name: "<pipe>"), header: h,
                                options: WriterOptions(chunkBytes: 4000))
        // The reader goes away after the header; the next chunk write fails.
        close(fds[0])
        let e = traceError {
            for r in makeRecords(h, count: 20, seed: 2, maxRows: 40) { try w.append(r) }
            try w.close()
        }
        let err = try #require(e)
        #expect(err.kind == .io)
        #expect(err.file == "<pipe>")
        #expect(err.description.contains("the reader closed the pipe"), "\(err)")
        #expect(err.offset != nil)
    }

    /// The CLI reports a full disk with the file name and exits non-zero.
    @Test(.enabled(if: binaryTestsEnabled, "no rtrace executable beside the tests (swift build --build-tests builds it)"))
    func cliFullDisk() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: rtraceBinary)
        p.arguments = ["import", "--from", "npz", "\(repoRoot)/samples/synthetic-E300-dense.npz", "--num-experts", "300", "-o", "/dev/full"]
        let err = Pipe()
        p.standardError = err
        try p.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus != 0)
        #expect(text.contains("/dev/full") && text.contains("No space left on device"), "\(text)")
    }

    // MARK: Exhaustive damage on a small multi-chunk trace

    /// Every single-bit flip of every byte (8 per byte) is detected, and `check` still recovers every
    /// record whose chunks the flip did not touch.
    @Test func everySingleBitFlip() throws {
        let (bytes, _, ix, start) = try smallMultiChunkTrace()
        #expect(ix.chunks.count >= 5)
        var flips = 0
        for i in 0..<bytes.count {
            // Records the flip cannot reach: those with no piece in the chunk holding byte i.
            let hit = ix.chunks.firstIndex { i >= $0.offset && i < $0.offset + $0.frameLength }
            let expected = i < start ? 0 : ix.records.filter { r in hit.map { !(r.firstChunk...(r.firstChunk + r.chunkCount - 1)).contains($0) } ?? true }.count
            for bit in 0..<8 {
                var b = bytes
                b[i] ^= UInt8(1) << UInt8(bit)
                let report = try TraceChecker.check(source: InputSource(bytes: b, name: "flip"))
                #expect(!report.clean, "bit \(bit) of byte \(i) flipped undetected")
                #expect(report.records == expected, "bit \(bit) of byte \(i): recovered \(report.records), expected \(expected)")
                flips += 1
            }
        }
        print("bit flips tested: \(flips) on a \(bytes.count)-byte, \(ix.chunks.count)-chunk trace")
    }

    /// Truncation at every byte offset, as a file and as a pipe: always reported, and the records
    /// of complete chunks are recovered exactly.
    @Test func truncationAtEveryOffset() throws {
        let (bytes, recs, ix, start) = try smallMultiChunkTrace()
        for cut in 0..<bytes.count {
            let b = Array(bytes[0..<cut])
            let complete = ix.chunks.filter { $0.offset + $0.frameLength <= cut }.count
            let expected = cut < start ? 0 : ix.records.filter { $0.firstChunk + $0.chunkCount <= complete }.count
            for seekable in [true, false] {
                let report = try TraceChecker.check(source: InputSource(bytes: b, name: "cut", seekable: seekable))
                #expect(!report.clean, "truncation at \(cut) went unreported")
                #expect(report.records == expected, "cut at \(cut), seekable \(seekable)")
                let e = traceError { _ = try TraceReader(bytes: b, seekable: seekable).readAll() }
                #expect(e?.kind == .truncated, "cut \(cut): \(String(describing: e))")
            }
        }
        // Salvage output of a mid-file cut holds exactly the complete records.
        let cut = ix.chunks[ix.chunks.count / 2].offset + 5
        let p = writeTemp("cut-mid.rtrace", Array(bytes[0..<cut]))
        let out = tempPath("cut-mid-salvaged.rtrace")
        let report = try TraceChecker.check(path: p, salvage: out)
        let salvaged = try TraceReader(path: out).readAll()
        #expect(salvaged == Array(recs.prefix(report.records)))
        print("truncation points tested: \(bytes.count) (file and pipe)")
    }

    // MARK: Bad input: each error names the file, the offset and what was expected

    @Test func badInputsNameFileOffsetAndExpectation() throws {
        let sample = "\(repoRoot)/samples/synthetic-E300-dense.rtrace"
        let good = [UInt8](try Data(contentsOf: URL(fileURLWithPath: sample)))
        var gz = [UInt8](repeating: 0, count: 40)
        gz[0] = 0x1F; gz[1] = 0x8B; gz[2] = 8
        var future = good
        future[8] = 2
        var hugeJSON = good
        storeU32(0xFFFF_FFF0, &hugeJSON, 12)
        let cases: [(String, [UInt8], TraceError.Kind, Int, String)] = [
            ("empty", [], .truncated, 0, "20 bytes"),
            ("npz", [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(repoRoot)/samples/synthetic-E300-dense.npz"))), .notATrace, 0, "zip"),
            ("gzip", gz, .notATrace, 0, "gzip"),
            ("text", Array("step,loss\n1,0.5\n".utf8), .notATrace, 0, "text"),
            ("short", Array(good[0..<12]), .truncated, 12, "needs 16"),
            ("future", future, .unsupportedVersion, 8, "version 1.x"),
            ("hugejson", hugeJSON, .limit, 12, "expected 2…16777216"),
        ]
        for (name, bytes, kind, offset, words) in cases {
            let p = writeTemp("bad-\(name).rtrace", bytes)
            let e = try #require(traceError { _ = try TraceReader(path: p) }, "\(name) was accepted")
            #expect(e.kind == kind, "\(name): \(e)")
            #expect(e.file == p, "\(name): \(e)")
            #expect(e.offset == offset, "\(name): \(e)")
            #expect(e.description.contains(words), "\(name): \(e)")
            // `check` reports the same thing instead of throwing.
            let report = try TraceChecker.check(path: p)
            #expect(!report.clean && report.issues.first?.offset == offset, "\(name): \(report.issues)")
        }
    }

    /// A decompression bomb (raw_len beyond what deflate can produce from stored_len) and an absurd
    /// row count fail with `limit` before anything is allocated for them.
    @Test func bombsAndAbsurdCountsAreLimits() throws {
        let (bytes, _, ix, _) = try smallMultiChunkTrace(fullHeader(), chunkBytes: 6000)
        let header = Array(bytes[0..<ix.chunks[0].offset])
        var fs = frames(bytes, ix)
        // 1. A deflated column that claims 512 MiB.
        let (ci, col) = try #require(fs.indices.lazy.compactMap { i in
            (0..<Int(loadU32(fs[i], 4))).first { fs[i][24 + 16 * $0 + 2] == 1 }.map { (i, $0) }
        }.first, "no deflated column")
        storeU32(1 << 29, &fs[ci], 24 + 16 * col + 4)
        resealChunkHeader(&fs[ci])
        let bomb = assemble(header: header, frames: fs, like: ix)
        let e1 = try #require(traceError { _ = try TraceReader(bytes: bomb, name: "bomb").readAll() })
        #expect(e1.kind == .limit && e1.file == "bomb", "\(e1)")
        #expect(e1.offset == ix.chunks[ci].offset + 24 + 16 * col + 4, "\(e1)")
        #expect(e1.message.contains("1032"), "\(e1)")
        // 2. A chunk that declares 16 million rows: over the 1 GiB decoded limit.
        fs = frames(bytes, ix)
        storeU32(16_000_000, &fs[0], 12)
        resealChunkHeader(&fs[0])
        let rows = assemble(header: header, frames: fs, like: ix)
        let e2 = try #require(traceError { _ = try TraceReader(bytes: rows, name: "rows").readAll() })
        #expect(e2.kind == .limit && e2.offset == ix.chunks[0].offset + 12 && e2.message.contains("GiB"), "\(e2)")
        // 3. On a pipe, a chunk whose columns declare 64 × 1 GiB fails as truncated, reading only what is there.
        var big = ByteWriter()
        big.append(Array("RTCK".utf8)); big.u32(64); big.u32(1); big.u32(0); big.u64(64 << 30)
        for i in 0..<64 { big.u16(UInt16(32 + i)); big.u8(0); big.u8(0); big.u32(1 << 30); big.u32(1 << 30); big.u32(0) }
        big.u32(Zlib.crc32(big.bytes))
        let piped = header + big.bytes + [UInt8](repeating: 7, count: 1000)
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let wfd = fds[1]
        let writer = Thread {
            piped.withUnsafeBytes { var o = 0; while o < $0.count { let n = write(wfd, $0.baseAddress! + o, $0.count - o); if n <= 0 { break }; o += n } }
            close(wfd)
        }
        writer.start()
        let source = try InputSource(path: "/proc/self/fd/\(fds[0])")
        close(fds[0])
        #expect(!source.isSeekable)
        let e3 = try #require(traceError { _ = try TraceReader(source: source).readAll() })
        #expect(e3.kind == .truncated, "\(e3)")
    }

    /// Unknown extension columns and unknown header column keys are skipped with a notice; an unknown
    /// reserved column id is an error.
    @Test func unknownColumnsAreSkippedWithANotice() throws {
        let (bytes, recs, ix, _) = try smallMultiChunkTrace()
        let header = Array(bytes[0..<ix.chunks[0].offset])
        var fs = frames(bytes, ix)
        fs[2] = addingColumn(fs[2], id: 40, data: Array("extension data".utf8))
        let ext = assemble(header: header, frames: fs, like: ix)
        let r = try TraceReader(bytes: ext, name: "ext")
        #expect(try r.readAll() == recs)
        #expect(r.notices.contains { $0.contains("#40") && $0.contains("offset \(ix.chunks[2].offset)") }, "\(r.notices)")
        let report = try TraceChecker.check(source: InputSource(bytes: ext, name: "ext"))
        #expect(report.clean, "\(report.issues)")
        #expect(report.issues.contains { $0.severity == .warning && $0.message.contains("#40") })
        // A reserved id (below 32) this reader does not know: the chunk is rejected.
        fs = frames(bytes, ix)
        fs[2] = addingColumn(fs[2], id: 5, data: [1, 2, 3])
        let reserved = assemble(header: header, frames: fs, like: ix)
        let e = try #require(traceError { _ = try TraceReader(bytes: reserved, name: "reserved").readAll() })
        #expect(e.kind == .corrupt && e.message.contains("reserved") && e.file == "reserved", "\(e)")
        #expect(e.offset.map { $0 > ix.chunks[2].offset && $0 < ix.chunks[2].offset + fs[2].count } == true, "\(e)")
        // An unknown key in the header's columns: a notice, and the file reads.
        let h0 = try TraceReader(bytes: bytes).header
        var json = h0.jsonObject
        var cols = json["columns"] as! [String: Any]
        cols["expert_bias"] = "f32"
        json["columns"] = cols
        let newJSON = [UInt8](try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys]))
        let withKey = assemble(header: fileHeader(json: newJSON), frames: frames(bytes, ix), like: ix)
        let r2 = try TraceReader(bytes: withKey, name: "newkey")
        #expect(r2.notices.contains { $0.contains("expert_bias") }, "\(r2.notices)")
        #expect(try r2.readAll() == recs)
    }

    /// Files given together with different geometry: the error names both files and the field.
    @Test(.enabled(if: binaryTestsEnabled, "no rtrace executable beside the tests (swift build --build-tests builds it)"))
    func wrongGeometryBetweenFiles() throws {
        let a = "\(repoRoot)/samples/qwen3moe-L6-E32-k4/rollout.rtrace"
        let b = "\(repoRoot)/samples/synthetic-E300-dense.rtrace"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: rtraceBinary)
        p.arguments = ["diff", a, b]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus != 0)
        #expect(text.contains(a) && text.contains(b) && text.contains("disagree on"), "\(text)")
    }

    // MARK: Fuzzer findings

    /// Every input the fuzzer found crashing (fuzz/regressions/) now reads to a TraceError or a result.
    @Test func fuzzRegressions() throws {
        let dir = "\(repoRoot)/fuzz/regressions"
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { !$0.hasPrefix(".") && !$0.hasSuffix(".md") }.sorted()
        for name in names {
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name)")))
            for seekable in [true, false] {
                _ = traceError {
                    let r = try TraceReader(bytes: bytes, name: name, seekable: seekable)
                    r.threads = 1
                    _ = try r.readAll()
                    if seekable {
                        _ = try r.summary()
                        _ = try r.chunkHeaders()
                        if let ix = r.index, !ix.records.isEmpty { _ = try r.record(ordinal: ix.records.count - 1) }
                    }
                }
                _ = traceError {
                    _ = try TraceChecker.check(source: InputSource(bytes: bytes, name: name, seekable: seekable),
                                               salvage: seekable ? "/dev/null" : nil)
                }
            }
        }
        print("fuzz regressions replayed: \(names.count)")
    }
}
