import Foundation
import RTraceTestSupport
import Testing
@testable import RTrace

// The streaming npz import and export (NpzImport, NpzExport) against the in-memory conversion they
// replaced (NpzReference), on the samples and on generated layouts; the zip reader's limits
// (members that declare more than they hold, or hold more than they declare); ZIP64.

/// A generated npz layout: its arrays and the options `rtrace import` would be given.
private struct Layout {
    var arrays: [String: NpyArray]
    var options: ImportOptions
}

/// `count` random bytes.
private func randomBytes(_ rng: inout TestRNG, _ count: Int) -> [UInt8] {
    (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
}

/// Ids `[S, R, LA, k]`: `k` distinct experts of `E` per (row, layer) of the MoE layers `moe`, for
/// the first `rows[s]` rows; `fill` elsewhere (padding rows, dense layers), and now and then a
/// missing (row, layer) of -1 when `missing`.
private func ids(_ rng: inout TestRNG, S: Int, R: Int, LA: Int, k: Int, E: Int, moe: [Int], rows: [Int],
                 missing: Bool, fill: Int64 = -1) -> [Int64] {
    var v = [Int64](repeating: fill, count: S * R * LA * k)
    for s in 0..<S {
        for r in 0..<R {
            for l in moe {
                let b = ((s * R + r) * LA + l) * k
                if r >= rows[s] { for j in 0..<k { v[b + j] = -1 }; continue }
                if missing && rng.int(6) == 0 { for j in 0..<k { v[b + j] = -1 }; continue }
                var pool = Array(0..<E)
                for j in 0..<k {
                    pool.swapAt(j, j + rng.int(E - j))
                    v[b + j] = Int64(pool[j])
                }
            }
        }
    }
    return v
}

/// The generated layouts, by name: every dtype import takes, both layer axes, the single-sequence
/// layout, ragged sequences with every per-sequence array, and no sequences at all.
private func layout(_ name: String) -> Layout {
    var rng = TestRNG(UInt64(name.utf8.reduce(7) { $0 &* 31 &+ UInt64($1) }))
    var o = ImportOptions()
    var a: [String: NpyArray] = [:]
    switch name {
    case "stacked-i4-f4":
        let (S, R, L, k, E) = (4, 6, 3, 2, 8)
        a["topk_ids"] = .ints(ids(&rng, S: S, R: R, LA: L, k: k, E: E, moe: Array(0..<L), rows: Array(repeating: R, count: S), missing: false), dtype: "i4", shape: [S, R, L, k])
        a["topk_weights"] = NpyArray(dtype: "f4", shape: [S, R, L, k], data: randomBytes(&rng, S * R * L * k * 4))
        a["tokens"] = .ints((0..<(S * 7)).map { Int64($0 * 13 % 1000) }, dtype: "i4", shape: [S, 7])
        a["prompt_len"] = .ints([2], dtype: "i8", shape: [])
        o.numExperts = E
    case "ragged-every-array":
        let (S, R, L, k, E) = (5, 9, 4, 3, 16)
        let rows = [9, 0, 3, 9, 5], start = [0, 2, 0, 1, 0], nTok = [12, 4, 5, 11, 9], nLp = [6, 0, 2, 6, 3]
        a["topk_ids"] = .ints(ids(&rng, S: S, R: R, LA: L, k: k, E: E, moe: Array(0..<L), rows: rows, missing: true), dtype: "i2", shape: [S, R, L, k])
        a["topk_weights"] = NpyArray(dtype: "u2", shape: [S, R, L, k], data: randomBytes(&rng, S * R * L * k * 2))
        a["router_logits"] = NpyArray(dtype: "f2", shape: [S, R, L, E], data: randomBytes(&rng, S * R * L * E * 2))
        a["tokens"] = .ints((0..<(S * 12)).map { Int64($0) * 100_003 }, dtype: "i8", shape: [S, 12])
        a["n_tokens"] = .ints(nTok.map(Int64.init), dtype: "i4", shape: [S])
        var lp = ByteWriter()  // finite (records compare logprobs as Floats, and NaN ≠ NaN)
        for _ in 0..<(S * 6) { lp.u16(Float16(-8 * rng.float()).bitPattern) }
        a["logprobs"] = NpyArray(dtype: "f2", shape: [S, 6], data: lp.bytes)
        a["n_logprobs"] = .ints(nLp.map(Int64.init), dtype: "i2", shape: [S])
        a["n_rows"] = .ints(rows.map(Int64.init), dtype: "i8", shape: [S])
        a["start"] = .ints(start.map(Int64.init), dtype: "i4", shape: [S])
        a["prompt_len"] = .ints([3, 1, 2, 4, 0], dtype: "i4", shape: [S])
        a["uids"] = .strings(["a/0", "a/1", "b", "ü-ñ", "seq 4"])
        a["groups"] = .strings(["g0", "g0", "", "g1", "g1"])
        var w = ByteWriter()
        for r in [1.5, .nan, -2, 0, .nan] { w.f64(r) }
        a["rewards"] = NpyArray(dtype: "f8", shape: [S], data: w.bytes)
    case "single-i1-f8":
        let (R, L, k, E) = (7, 2, 3, 20)
        a["topk_ids"] = .ints(ids(&rng, S: 1, R: R, LA: L, k: k, E: E, moe: [0, 1], rows: [R], missing: true), dtype: "i1", shape: [R, L, k])
        a["tokens"] = .ints((0..<9).map { Int64($0) }, dtype: "i8", shape: [9])
        var w = ByteWriter()
        for i in 0..<4 { w.f64(-0.25 * Double(i)) }
        a["logprobs"] = NpyArray(dtype: "f8", shape: [4], data: w.bytes)
        a["prompt_len"] = .ints([3], dtype: "i4", shape: [])
        o.numExperts = E
    case "decoder-axis-u2":
        // All decoder layers, dense ones 0 (as SGLang fills them); MoE layers 1, 2, 4, 5 of 6.
        let (S, R, LA, k, E) = (3, 5, 6, 2, 5)
        let moe = [1, 2, 4, 5]
        a["topk_ids"] = .ints(ids(&rng, S: S, R: R, LA: LA, k: k, E: E, moe: moe, rows: Array(repeating: R, count: S), missing: false, fill: 0), dtype: "u2", shape: [S, R, LA, k])
        a["topk_weights"] = NpyArray(dtype: "f2", shape: [S, R, LA, k], data: randomBytes(&rng, S * R * LA * k * 2))
        a["router_logits"] = NpyArray(dtype: "f4", shape: [S, R, LA, E], data: randomBytes(&rng, S * R * LA * E * 4))
        o.numLayers = LA
        o.layerMap = moe
    case "wide-i8-u4":
        let (S, R, L, k, E) = (3, 4, 2, 4, 300)
        a["topk_ids"] = .ints(ids(&rng, S: S, R: R, LA: L, k: k, E: E, moe: [0, 1], rows: [4, 2, 4], missing: false), dtype: "i8", shape: [S, R, L, k])
        a["n_rows"] = .ints([4, 2, 4], dtype: "i4", shape: [S])
        a["tokens"] = .ints((0..<(S * 6)).map { Int64($0) * 70_001 }, dtype: "u4", shape: [S, 6])
        o.numExperts = E
        o.uidPrefix = "w-"
    case "empty":
        a["topk_ids"] = .ints([], dtype: "i4", shape: [0, 5, 2, 2])
        o.numExperts = 4
    default:
        preconditionFailure("no layout \(name)")
    }
    return Layout(arrays: a, options: o)
}

private let layoutNames = ["stacked-i4-f4", "ragged-every-array", "single-i1-f8", "decoder-axis-u2", "wide-i8-u4", "empty"]

/// Everything but `created` (a timestamp).
private func sameHeader(_ a: TraceHeader, _ b: TraceHeader) -> Bool {
    a.engine == b.engine && a.model == b.model && a.columns == b.columns && a.policyVersion == b.policyVersion && a.attributes == b.attributes
}

/// Every record of a streaming import.
private func records(_ imp: NpzImport) throws -> [TraceRecord] {
    var out: [TraceRecord] = []
    while let r = try imp.next() { out.append(r) }
    return out
}

/// Writes `arrays` as an npz (members in name order) and returns its path.
private func writeNpz(_ name: String, _ arrays: [String: NpyArray], compress: Bool = false) throws -> String {
    let p = tempPath(name)
    try Npz.write(arrays.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }, path: p, compress: compress)
    return p
}

/// Writes a zip of `members` (name, bytes, deflated) with ZipWriter and returns its path.
private func writeZip(_ name: String, _ members: [(String, [UInt8], Bool)]) throws -> String {
    let p = tempPath(name)
    let sink = try OutputSink(path: p)
    let zw = ZipWriter(sink: sink)
    for (member, data, compress) in members {
        try zw.begin(member, size: data.count, compress: compress)
        try zw.write(data)
        try zw.end()
    }
    try zw.finish()
    try sink.close()
    return p
}

/// The bytes of the file at `path`.
private func bytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

/// Where member `name`'s data starts in zip bytes `b` (from its local header).
private func memberData(_ name: String, in b: [UInt8]) -> Int? {
    for at in offsets(of: 0x0403_4B50, in: b) {
        let n = Int(loadU16(b, at + 26))
        if at + 30 + n <= b.count, Array(b[(at + 30)..<(at + 30 + n)]) == Array(name.utf8) {
            return at + 30 + n + Int(loadU16(b, at + 28))
        }
    }
    return nil
}

/// Offsets of the 4-byte little-endian `signature` in `b`.
private func offsets(of signature: UInt32, in b: [UInt8]) -> [Int] {
    b.count < 4 ? [] : (0...(b.count - 4)).filter { loadU32(b, $0) == signature }
}

@Suite struct NpzStreamingTests {
    /// The streaming import gives the records the in-memory conversion gave, for stored and deflated
    /// members read in blocks of a few rows; both exports give the arrays the old export gave.
    @Test(arguments: layoutNames)
    func streamingImportEqualsTheInMemoryReference(_ name: String) throws {
        let l = layout(name)
        let (refHeader, refRecords) = try NpzReference.makeTrace(l.arrays, options: l.options)
        for compress in [false, true] {
            let path = try writeNpz("gen-\(name)-\(compress).npz", l.arrays, compress: compress)
            let imp = try NpzImport(npz: path, options: l.options, blockBytes: 64)
            #expect(sameHeader(imp.header, refHeader), "\(name): header")
            #expect(try records(imp) == refRecords, "\(name) compress=\(compress): records")
            #expect(try imp.next() == nil)
        }
        let (h, recs) = try NpzConversion.makeTrace(l.arrays, options: l.options)
        #expect(sameHeader(h, refHeader) && recs == refRecords, "\(name): in-memory import")

        // Export: in memory, and streamed to an archive with topk_ids written directly (an index
        // gives its shape) or spooled (no index).
        let refArrays = NpzReference.makeArrays(header: refHeader, records: refRecords)
        let got = NpzConversion.makeArrays(header: refHeader, records: refRecords)
        #expect(got.map(\.0) == refArrays.map(\.0), "\(name): export members")
        for ((n, a), (_, b)) in zip(got, refArrays) { #expect(a == b, "\(name): exported \(n)") }
        for (direct, compress) in [(true, false), (false, false), (true, true)] {
            let out = tempPath("gen-\(name)-out-\(direct)-\(compress).npz")
            let sink = try OutputSink(path: out)
            let layout = direct ? NpzExport.Layout(sequences: refRecords.count, maxRows: refRecords.map(\.rowCount).max() ?? 0) : nil
            let e = try NpzExport(header: refHeader, sink: sink, compress: compress, layout: layout)
            for r in refRecords { try e.add(r) }
            try e.finish()
            try sink.close()
            let back = try Npz.read(path: out)
            #expect(back.count == refArrays.count)
            for (n, a) in refArrays { #expect(back[n] == a, "\(name) direct=\(direct) compress=\(compress): \(n)") }
        }
    }

    /// The real samples: the streaming import gives what the in-memory conversion gave.
    @Test(arguments: goldenPairs)
    func streamingImportOfTheSamples(_ base: String) throws {
        let golden = try TraceReader(path: "\(repoRoot)/\(base).rtrace").header
        var o = ImportOptions()
        o.numLayers = golden.model.numLayers
        o.layerMap = golden.model.layerMap
        o.numExperts = golden.model.numExperts
        let (refHeader, refRecords) = try NpzReference.makeTrace(try Npz.read(path: "\(repoRoot)/\(base).npz"), options: o)
        let imp = try NpzImport(npz: "\(repoRoot)/\(base).npz", options: o, blockBytes: 1000)
        #expect(sameHeader(imp.header, refHeader))
        #expect(try records(imp) == refRecords)
    }

    /// Bad values are refused with the message the in-memory conversion gave, plus the file.
    @Test func badValuesGiveTheReferenceErrors() throws {
        let base = layout("stacked-i4-f4")
        var cases: [(String, [String: NpyArray])] = []
        func planted(_ i: Int, _ values: [Int64]) -> [String: NpyArray] {
            var a = base.arrays
            var v = (0..<a["topk_ids"]!.count).map { a["topk_ids"]!.int($0) }
            for (j, x) in values.enumerated() { v[i + j] = x }
            a["topk_ids"] = .ints(v, dtype: "i4", shape: a["topk_ids"]!.shape)
            return a
        }
        let at = ((2 * 6 + 4) * 3 + 1) * 2  // [2, 4, 1, 0]
        cases.append(("out of range", planted(at, [8])))
        cases.append(("duplicate", planted(at, [5, 5])))
        cases.append(("negative", planted(at, [-2])))
        cases.append(("mixed", planted(at, [-1, 3])))
        var rows = base.arrays
        rows["n_rows"] = .ints([6, 7, 1, 1], dtype: "i4", shape: [4])
        cases.append(("n_rows", rows))
        var shape = base.arrays
        shape["topk_weights"] = NpyArray(dtype: "f4", shape: [4, 6, 3, 3], data: [UInt8](repeating: 0, count: 4 * 6 * 3 * 3 * 4))
        cases.append(("weights shape", shape))
        for (what, arrays) in cases {
            let ref = try #require(traceError { _ = try NpzReference.makeTrace(arrays, options: base.options) }, "\(what)")
            let path = try writeNpz("bad-\(what).npz", arrays)
            let got = try #require(traceError { _ = try records(try NpzImport(npz: path, options: base.options)) }, "\(what)")
            #expect(got.message == ref.message && got.kind == ref.kind, "\(what): \(got) vs \(ref)")
            #expect(got.file == path, "\(what): \(got)")
        }
    }

    /// A member whose `.npy` header declares far more than the member holds (the bomb,
    /// scaled down: 1.5 GB declared, 1 MiB of zeros held) is refused when opened, before any of its
    /// data is inflated or a record allocated; one whose directory also lies is refused by the
    /// deflate ratio; one that ends early names where.
    @Test func memberDeclaringMoreThanItHoldsIsRefused() throws {
        let declared = NpyHeader(dtype: "i4", shape: [1, 1_000_000, 48, 8])
        let h = declared.encoded()
        let member = h + [UInt8](repeating: 0, count: 1 << 20)
        let path = try writeZip("bomb-declares.npz", [("topk_ids.npy", member, true)])
        #expect(try bytes(path).count < 8 << 10, "1 MiB of zeros deflates to a few KB")
        var o = ImportOptions()
        o.numExperts = 128
        let e = try #require(traceError { _ = try NpzImport(npz: path, options: o) })
        #expect(e.file == path && e.message.contains("topk_ids.npy"), "\(e)")
        #expect(e.message.contains("\(h.count + declared.dataSize)") && e.message.contains("\(member.count)"), "declared and found sizes: \(e)")

        // The directory made to agree with the header: more than deflate can expand to.
        var b = try bytes(path)
        let cd = try #require(offsets(of: 0x0201_4B50, in: b).first)
        storeU32(UInt32(h.count + declared.dataSize), &b, cd + 24)
        let lying = writeTemp("bomb-declares-lying.npz", b)
        let e2 = try #require(traceError { _ = try NpzImport(npz: lying, options: o) })
        #expect(e2.kind == .limit && e2.message.contains("topk_ids.npy") && e2.message.contains("1032"), "\(e2)")

        // Within deflate's ratio (incompressible data), the member ends early: named when read.
        var rng = TestRNG(5)
        let small = NpyHeader(dtype: "u1", shape: [40_000])
        let short = small.encoded() + randomBytes(&rng, 30_000)
        var b3 = try bytes(try writeZip("bomb-short.npz", [("x.npy", short, true)]))
        let cd3 = try #require(offsets(of: 0x0201_4B50, in: b3).first)
        storeU32(UInt32(small.encoded().count + 40_000), &b3, cd3 + 24)
        let p3b = writeTemp("bomb-short-lying.npz", b3)
        let stream = try #require(try NpzArchive(path: p3b).stream("x"))
        var buf: [UInt8] = []
        try stream.read(20_000, into: &buf)
        let e3 = try #require(traceError { try stream.read(20_000, into: &buf) })
        #expect(e3.message.contains("x.npy") && e3.message.contains("ends after \(short.count) bytes")
                && e3.message.contains("declares \(small.encoded().count + 40_000)"), "\(e3)")
    }

    /// A member that inflates to more than its `.npy` header (and directory) declare: reading stops
    /// at the declared size, the records are read, and the end of the import refuses the member,
    /// naming the declared and the found size.
    @Test func memberHoldingMoreThanItDeclaresIsRefused() throws {
        let l = layout("stacked-i4-f4")
        var arrays = l.arrays
        arrays["topk_weights"] = nil
        let ids = arrays["topk_ids"]!
        let npy = ids.npyBytes()
        let extra = 8 << 20
        let member = npy + [UInt8](repeating: 0, count: extra)
        let path = try writeZip("bomb-holds.npz", [("topk_ids.npy", member, true), ("tokens.npy", arrays["tokens"]!.npyBytes(), false),
                                                   ("prompt_len.npy", arrays["prompt_len"]!.npyBytes(), false)])
        // The directory says what the header says (CRC of the declared bytes too): only the stream holds more.
        var b = try bytes(path)
        let cd = try #require(offsets(of: 0x0201_4B50, in: b).first)
        storeU32(UInt32(npy.count), &b, cd + 24)
        storeU32(Zlib.crc32(npy), &b, cd + 16)
        let p = writeTemp("bomb-holds-lying.npz", b)

        // The member reader stops inflating at the declared size.
        let archive = try ZipArchive(source: try InputSource(path: p))
        let entry = try #require(archive.entries.first { $0.name == "topk_ids.npy" })
        let reader = try ZipMemberReader(archive: archive, entry: entry)
        var buf = [UInt8](repeating: 0, count: npy.count)
        #expect(try withBytes(&buf) { raw throws(TraceError) in try reader.read(into: raw) } == npy.count)
        #expect(reader.produced == npy.count && buf == npy)
        let e = try #require(traceError { try reader.finish(declared: npy.count) })
        #expect(e.message.contains("holds more than the \(npy.count) bytes") && e.message.contains("\(member.count) bytes found"), "\(e)")

        // The import reads the records, then refuses the member at the end.
        let imp = try NpzImport(npz: p, options: l.options)
        var n = 0
        let e2 = try #require(traceError { while try imp.next() != nil { n += 1 } })
        #expect(n == 4 && e2.file == p && e2.kind == .corrupt && e2.message.contains("topk_ids.npy"), "\(e2)")
    }

    /// Damage is named: a truncated archive, a stored member whose CRC fails, an invalid deflate stream.
    @Test func damagedArchivesNameTheFileAndMember() throws {
        let l = layout("stacked-i4-f4")
        let path = try writeNpz("damage.npz", l.arrays)
        let good = try bytes(path)
        let cut = writeTemp("damage-cut.npz", Array(good[0..<(good.count / 2)]))
        let e1 = try #require(traceError { _ = try NpzImport(npz: cut, options: l.options) })
        #expect(e1.kind == .truncated && e1.file == cut, "\(e1)")

        // One byte of topk_ids' data flipped: the CRC at the end.
        var flipped = good
        let dataAt = try #require(memberData("topk_ids.npy", in: good)) + 200
        flipped[dataAt] ^= 0x01
        let p2 = writeTemp("damage-crc.npz", flipped)
        let e2 = try #require(traceError { _ = try records(try NpzImport(npz: p2, options: l.options)) })
        #expect(e2.kind == .checksum || e2.kind == .invalidInput, "\(e2)")
        #expect(e2.file == p2 && e2.description.contains("topk_ids"), "\(e2)")

        // Garbage in a deflated member.
        let p3 = try writeNpz("damage-deflate.npz", l.arrays, compress: true)
        var d = try bytes(p3)
        let at3 = try #require(memberData("topk_ids.npy", in: d))
        for i in 0..<16 { d[at3 + i] = 0xFF }
        let p3b = writeTemp("damage-deflate-bad.npz", d)
        let e3 = try #require(traceError { _ = try records(try NpzImport(npz: p3b, options: l.options)) })
        #expect(e3.file == p3b && e3.message.contains("topk_ids.npy") && e3.offset != nil, "\(e3)")

        let notZip = writeTemp("damage-text.npz", Array("hello, this is not a zip archive".utf8))
        let e4 = try #require(traceError { _ = try NpzArchive(path: notZip) })
        #expect(e4.kind == .invalidInput && e4.message.contains("not an .npz"), "\(e4)")
    }

    /// A ZIP64 archive built by hand (APPNOTE 4.5.3, 4.3.14-15): member sizes and a local header
    /// offset in ZIP64 extra fields, and the ZIP64 end records, read like any other.
    @Test func readsAHandBuiltZip64Archive() throws {
        let a = NpyArray.ints([1, -2, 3, 4, 5, 6], dtype: "i2", shape: [2, 3])
        let b = NpyArray.strings(["x", "yz"])
        var w = ByteWriter()
        var directory = ByteWriter()
        // Member 1: both sizes in the ZIP64 field; member 2: only its offset.
        for (i, (name, arr)) in [("a.npy", a), ("b.npy", b)].enumerated() {
            let data = arr.npyBytes(), nameBytes = Array(name.utf8), offset = w.bytes.count
            let crc = Zlib.crc32(data)
            w.u32(0x0403_4B50); w.u16(45); w.u16(0); w.u16(0); w.u16(0); w.u16(0x21); w.u32(crc)
            if i == 0 {
                w.u32(0xFFFF_FFFF); w.u32(0xFFFF_FFFF); w.u16(UInt16(nameBytes.count)); w.u16(20); w.append(nameBytes)
                w.u16(1); w.u16(16); w.u64(UInt64(data.count)); w.u64(UInt64(data.count))
            } else {
                w.u32(UInt32(data.count)); w.u32(UInt32(data.count)); w.u16(UInt16(nameBytes.count)); w.u16(0); w.append(nameBytes)
            }
            w.append(data)
            var extra = ByteWriter()
            if i == 0 { extra.u64(UInt64(data.count)); extra.u64(UInt64(data.count)) } else { extra.u64(UInt64(offset)) }
            directory.u32(0x0201_4B50); directory.u16(0x032D); directory.u16(45); directory.u16(0); directory.u16(0)
            directory.u16(0); directory.u16(0x21); directory.u32(crc)
            directory.u32(i == 0 ? 0xFFFF_FFFF : UInt32(data.count)); directory.u32(i == 0 ? 0xFFFF_FFFF : UInt32(data.count))
            directory.u16(UInt16(nameBytes.count)); directory.u16(UInt16(4 + extra.bytes.count)); directory.u16(0)
            directory.u16(0); directory.u16(0); directory.u32(0); directory.u32(i == 0 ? UInt32(offset) : 0xFFFF_FFFF)
            directory.append(nameBytes); directory.u16(1); directory.u16(UInt16(extra.bytes.count)); directory.append(extra.bytes)
        }
        let cdOffset = w.bytes.count
        w.append(directory.bytes)
        let record = w.bytes.count
        w.u32(0x0606_4B50); w.u64(44); w.u16(45); w.u16(45); w.u32(0); w.u32(0)
        w.u64(2); w.u64(2); w.u64(UInt64(directory.bytes.count)); w.u64(UInt64(cdOffset))
        w.u32(0x0706_4B50); w.u32(0); w.u64(UInt64(record)); w.u32(1)
        w.u32(0x0605_4B50); w.u16(0); w.u16(0); w.u16(0xFFFF); w.u16(0xFFFF); w.u32(0xFFFF_FFFF); w.u32(0xFFFF_FFFF); w.u16(0)
        let path = writeTemp("handmade-zip64.npz", w.bytes)
        let got = try Npz.read(path: path)
        #expect(got == ["a": a, "b": b])
    }

    /// ZIP64 written (forced, as np.savez's force_zip64 does for its members) is read back by this
    /// reader and by numpy, with every array equal to the plain archive's.
    @Test(.enabled(if: noSkip || FileManager.default.isExecutableFile(atPath: "\(repoRoot)/.venv/bin/python"),
                   "no .venv/bin/python (make deps makes it)"))
    func writesZip64ThatNumpyReads() throws {
        let l = layout("ragged-every-array")
        let arrays = l.arrays.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        let plain = tempPath("zip64-plain.npz"), forced = tempPath("zip64-forced.npz")
        try Npz.write(arrays, path: plain)
        let sink = try OutputSink(path: forced)
        try Npz.write(arrays, to: ZipWriter(sink: sink, forceZip64: true), compress: true)
        try sink.close()
        let b = try bytes(forced)
        #expect(!offsets(of: 0x0606_4B50, in: b).isEmpty && !offsets(of: 0x0706_4B50, in: b).isEmpty, "ZIP64 end records")
        let back = try Npz.read(path: forced)
        for (n, a) in arrays { #expect(back[n] == a, "\(n)") }

        let script = """
            import sys, zipfile, numpy as np
            forced, plain = sys.argv[1], sys.argv[2]
            assert zipfile.ZipFile(forced).testzip() is None
            a, b = np.load(forced), np.load(plain)
            assert sorted(a.files) == sorted(b.files), (a.files, b.files)
            for k in b.files:
                assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), k
            print("numpy read", len(a.files), "arrays")
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "\(repoRoot)/.venv/bin/python")
        p.arguments = ["-c", script, forced, plain]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 0, "numpy: \(text)")
    }
}
