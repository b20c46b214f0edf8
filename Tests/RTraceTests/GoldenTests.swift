import RTraceTestSupport
import Foundation
import Testing
@testable import RTrace

/// The repository root, found from this file's path (tests read `samples/`).

let goldenPairs = [
    "samples/qwen3moe-L6-E32-k4/rollout",
    "samples/qwen3moe-L6-E32-k4/train_mixed",
    "samples/qwen3moe-L6-E32-k4/train_fp32",
    "samples/qwen3moe-L6-E32-k4/train_r3",
    "samples/synthetic-E300-dense",
]

@Suite struct GoldenTests {
    /// Each golden .rtrace decodes to exactly the arrays of its .npz (names, dtypes, shapes, bytes).
    @Test(arguments: goldenPairs)
    func goldenFileDecodesToItsArrays(_ base: String) throws {
        let reader = try TraceReader(path: "\(repoRoot)/\(base).rtrace")
        #expect(reader.isComplete)
        let got = NpzConversion.makeArrays(header: reader.header, records: try reader.readAll())
        let want = try Npz.read(path: "\(repoRoot)/\(base).npz")
        #expect(Set(got.map(\.0)) == Set(want.keys))
        for (name, arr) in got {
            let w = try #require(want[name])
            #expect(arr.dtype == w.dtype, "\(name) dtype")
            #expect(arr.shape == w.shape, "\(name) shape")
            #expect(arr.data == w.data, "\(name) bytes")
        }
    }

    /// Importing the arrays again and exporting gives the same bytes: npz → rtrace → npz is exact.
    @Test(arguments: goldenPairs)
    func npzRoundTripIsBitExact(_ base: String) throws {
        let arrays = try Npz.read(path: "\(repoRoot)/\(base).npz")
        let golden = try TraceReader(path: "\(repoRoot)/\(base).rtrace").header
        var o = ImportOptions()
        o.numLayers = golden.model.numLayers
        o.layerMap = golden.model.layerMap
        o.numExperts = golden.model.numExperts
        let (h, recs) = try NpzConversion.makeTrace(arrays, options: o)
        let path = tempPath("golden-\(base.split(separator: "/").last!).rtrace")
        let w = try TraceWriter(path: path, header: h, options: WriterOptions(chunkBytes: 1024))
        for r in recs { try w.append(r) }
        try w.close()
        #expect(w.index.records.contains { $0.chunkCount > 1 }, "records span chunks")
        let r = try TraceReader(path: path)
        let back = NpzConversion.makeArrays(header: r.header, records: try r.readAll())
        for (name, arr) in back { #expect(arrays[name] == arr, "\(name) differs after npz → rtrace → npz") }
        #expect(back.count == arrays.count)
    }

    /// The real sample: neighbouring rows share experts, so ordered reuse beats plain u8 ids.
    @Test func realRoutingCompressesBelowOneBytePerID() throws {
        let r = try TraceReader(path: "\(repoRoot)/samples/qwen3moe-L6-E32-k4/rollout.rtrace")
        var stored = 0
        var rows = 0
        for (_, h) in try r.chunkHeaders() {
            rows += h.rowCount
            stored += h.columns.filter { $0.id == ColumnID.idSlots.rawValue || $0.id == ColumnID.idNew.rawValue }.reduce(0) { $0 + $1.storedLength }
        }
        let perID = Double(stored) / Double(rows * 6 * 4)
        #expect(rows == 12 * 127)
        #expect(perID < 0.75, "ids cost \(perID) bytes each")
    }
}
