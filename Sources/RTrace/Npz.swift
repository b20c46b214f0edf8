import Foundation
import ZIPFoundation

/// `.npz` archives (a zip of `.npy` members, as `np.savez` writes), read and written through ZIPFoundation.
public enum Npz {
    /// Reads every array of an `.npz` at `path` (`-` = standard input), keyed by name without `.npy`.
    public static func read(path: String) throws(TraceError) -> [String: NpyArray] {
        let data: Data
        do {
            data = path == "-" ? FileHandle.standardInput.readDataToEndOfFile() : try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw TraceError(.io, "cannot read: \(error.localizedDescription)", file: path)
        }
        let archive: Archive
        do { archive = try Archive(data: data, accessMode: .read) } catch {
            throw TraceError(.invalidInput, "not an .npz (zip) archive: \(error)", file: path)
        }
        var out: [String: NpyArray] = [:]
        for entry in archive where entry.type == .file {
            var bytes = [UInt8]()
            do {
                _ = try archive.extract(entry, skipCRC32: false) { bytes.append(contentsOf: $0) }
            } catch {
                throw TraceError(.invalidInput, "member \(entry.path) cannot be extracted: \(error)", file: path)
            }
            var name = entry.path
            if name.hasSuffix(".npy") { name.removeLast(4) }
            do { out[name] = try NpyArray.parse(bytes, name: entry.path) } catch { throw error.inFile(path) }
        }
        return out
    }

    /// Writes `arrays` as an `.npz` at `path` (`-` = standard output), deflating members when `compress`.
    public static func write(_ arrays: [(String, NpyArray)], path: String, compress: Bool = false) throws(TraceError) {
        do {
            let archive = try Archive(data: Data(), accessMode: .create)
            for (name, a) in arrays {
                let bytes = Data(a.npyBytes())
                try archive.addEntry(with: name + ".npy", type: .file, uncompressedSize: Int64(bytes.count),
                                     compressionMethod: compress ? .deflate : .none) { pos, size in
                    bytes.subdata(in: Int(pos)..<Int(pos) + size)
                }
            }
            guard let data = archive.data else { throw TraceError(.io, "zip archive produced no data", file: path) }
            let sink = try OutputSink(path: path)
            try sink.write([UInt8](data))
            try sink.close()
        } catch let e as TraceError {
            throw e
        } catch {
            throw TraceError(.io, "cannot write .npz: \(error)", file: path)
        }
    }
}
