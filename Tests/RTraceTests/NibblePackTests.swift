import Foundation
import Testing
@testable import RTrace
import RTraceTestSupport

/// Transform 2 (spec/format.md §6.3) and the plane-by-plane deflate stream of §6.4.
@Suite struct NibblePackTests {
    @Test(arguments: [0, 1, 2, 7, 31, 32, 33, 1000, 1001])
    func packThenUnpackGivesTheCodes(count: Int) throws {
        var rng = TestRNG(UInt64(count))
        // Every storable code: reuse codes 0…14 and the new marker.
        let codes = (0..<count).map { _ in rng.int(4) == 0 ? UInt8(0xFF) : UInt8(rng.int(15)) }
        let packed = NibblePack.pack(codes)
        #expect(packed.count == (count + 1) / 2)
        #expect(NibblePack.unpack(packed, count: count) == codes)
        for (i, c) in codes.enumerated() {
            let nibble = i % 2 == 0 ? packed[i / 2] & 0x0F : packed[i / 2] >> 4
            #expect(nibble == (c == 0xFF ? 15 : c), "code \(i)")
        }
    }

    @Test func aStrayHighNibbleIsRejected() {
        #expect(NibblePack.unpack([0x10], count: 1) == nil)
        #expect(NibblePack.unpack([0x1F], count: 2) == [0xFF, 1])
    }

    /// Files written before transform 2 (one byte per code), and top_k > 15, which cannot pack.
    @Test(arguments: [(4, false), (4, true), (16, true)])
    func bothSlotLayoutsReadBack(topK: Int, nibbles: Bool) throws {
        let h = TraceHeader(
            engine: EngineInfo(name: "test", version: "1", role: .rollout),
            model: ModelGeometry(name: "tiny", numLayers: 3, numExperts: 40, topK: topK, layerMap: [0, 2]),
            columns: ColumnTypes(topkWeights: .bf16, routerLogits: nil, logprobs: false), policyVersion: nil, attributes: [:])
        let recs = makeRecords(h, count: 9, seed: UInt64(topK))
        let path = tempPath("nibble-\(topK)-\(nibbles).rtrace")
        var o = WriterOptions(chunkBytes: 8_000)
        o.nibblePackSlots = nibbles
        let w = try TraceWriter(path: path, header: h, options: o)
        for r in recs { try w.append(r) }
        try w.close()
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let first = try #require(w.index.chunks.first)
        let ch = try ChunkHeader.parse(Array(bytes[Int(first.offset)...]))
        let slots = try #require(ch.columns.first { $0.id == ColumnID.idSlots.rawValue })
        #expect(slots.transform == (nibbles && topK <= 15 ? 2 : 0))
        let back = try TraceReader(path: path).readAll()
        #expect(back == recs)
    }

    @Test func transformTwoOnAnotherColumnIsRejected() throws {
        let h = fullHeader()
        let path = tempPath("nibble-misplaced.rtrace")
        let w = try TraceWriter(path: path, header: h)
        for r in makeRecords(h, count: 2, seed: 5) { try w.append(r) }
        try w.close()
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let at = Int(try #require(w.index.chunks.first).offset)
        let ch = try ChunkHeader.parse(Array(bytes[at...]))
        let i = try #require(ch.columns.firstIndex { $0.id == ColumnID.tokens.rawValue })
        bytes[at + 24 + 16 * i + 3] = 2  // TOKENS' transform
        let crcAt = at + 24 + 16 * ch.columns.count
        let crc = Zlib.crc32(bytes[at..<crcAt])
        for b in 0..<4 { bytes[crcAt + b] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(b))) }
        let bad = writeTemp("nibble-misplaced-bad.rtrace", bytes)
        do {
            _ = try TraceReader(path: bad).readAll()
            Issue.record("a nibble-packed TOKENS column was accepted")
        } catch let e as TraceError {
            #expect(e.message.contains("transform 2"))
            #expect(e.message.contains("tokens"))
        }
    }

    /// A shuffled column deflates plane by plane into one stream that any inflater reads; a random
    /// plane is stored, a compressible one coded.
    @Test func planeByPlaneDeflateIsOneStream() throws {
        var rng = TestRNG(11)
        let n = 50_000
        let random = (0..<n).map { _ in UInt8(rng.int(256)) }
        let skewed = (0..<n).map { _ in UInt8(rng.int(4) == 0 ? rng.int(256) : 0x3F) }
        for strategy in [Zlib.Strategy.huffmanOnly, .level(1)] {
            let input = skewed + random + skewed
            let z = Zlib.deflate(planes: input, count: 3, strategy: strategy)
            #expect(try Zlib.inflate(z[...], rawLength: input.count) == input)
            // The random plane costs about its size (stored), the skewed ones much less.
            #expect(z.count > n && z.count < n + n)
        }
        #expect(Zlib.deflate(planes: random, count: 1, strategy: .huffmanOnly).count >= n - n / 50)
    }
}
