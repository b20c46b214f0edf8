import Foundation
@testable import RTrace

/// A decoded 8-bit RGB(A) PNG (what Chromium's --screenshot writes), for checking screenshots.
struct PNGImage {
    var width: Int, height: Int
    /// RGB triples, row-major.
    var rgb: [UInt8]

    struct Bad: Error, CustomStringConvertible { var description: String }

    init(path: String) throws {
        guard let d = FileManager.default.contents(atPath: path) else { throw Bad(description: "cannot read \(path)") }
        let b = [UInt8](d)
        guard b.count > 8, b[0..<8].elementsEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]) else {
            throw Bad(description: "\(path) is not a PNG")
        }
        func be32(_ i: Int) -> Int { Int(b[i]) << 24 | Int(b[i + 1]) << 16 | Int(b[i + 2]) << 8 | Int(b[i + 3]) }
        var pos = 8, w = 0, h = 0, depth = 0, ctype = 0, interlace = 0
        var idat: [UInt8] = []
        while pos + 8 <= b.count {
            let len = be32(pos), type = String(decoding: b[pos + 4..<pos + 8], as: UTF8.self)
            let body = b[pos + 8..<pos + 8 + len]
            if type == "IHDR" {
                w = be32(pos + 8); h = be32(pos + 12)
                depth = Int(b[pos + 16]); ctype = Int(b[pos + 17]); interlace = Int(b[pos + 20])
            } else if type == "IDAT" {
                idat += body
            } else if type == "IEND" { break }
            pos += 12 + len
        }
        guard depth == 8, ctype == 2 || ctype == 6, interlace == 0 else {
            throw Bad(description: "unsupported PNG: depth \(depth), colour type \(ctype), interlace \(interlace)")
        }
        let bpp = ctype == 6 ? 4 : 3, stride = w * bpp
        // zlib wrapper: 2-byte header, raw deflate, 4-byte Adler-32.
        let raw = try Zlib.inflate(idat[2..<idat.count - 4], rawLength: h * (stride + 1))
        var cur = [UInt8](repeating: 0, count: stride), prev = cur
        var out = [UInt8]()
        out.reserveCapacity(w * h * 3)
        for y in 0..<h {
            let f = raw[y * (stride + 1)], row = y * (stride + 1) + 1
            for i in 0..<stride {
                let x = Int(raw[row + i])
                let a = i >= bpp ? Int(cur[i - bpp]) : 0, up = Int(prev[i]), c = i >= bpp ? Int(prev[i - bpp]) : 0
                let v: Int
                switch f {
                case 0: v = x
                case 1: v = x + a
                case 2: v = x + up
                case 3: v = x + (a + up) / 2
                case 4:
                    let p = a + up - c, pa = abs(p - a), pb = abs(p - up), pc = abs(p - c)
                    v = x + (pa <= pb && pa <= pc ? a : (pb <= pc ? up : c))
                default: throw Bad(description: "bad PNG filter \(f) in row \(y)")
                }
                cur[i] = UInt8(truncatingIfNeeded: v)
            }
            for px in 0..<w { out += cur[px * bpp..<px * bpp + 3] }
            swap(&cur, &prev)
        }
        width = w; height = h; rgb = out
    }

    /// Whether pixel (x, y) is (nearly) the page background: white or the light grey page colour.
    func isBackground(_ x: Int, _ y: Int) -> Bool {
        let i = (y * width + x) * 3
        return rgb[i] >= 240 && rgb[i + 1] >= 240 && rgb[i + 2] >= 238
    }

    /// Distinct colours (quantised to 5 bits per channel).
    var distinctColors: Int {
        var seen = Set<Int>()
        var i = 0
        while i < rgb.count {
            seen.insert(Int(rgb[i] >> 3) << 10 | Int(rgb[i + 1] >> 3) << 5 | Int(rgb[i + 2] >> 3))
            i += 3
        }
        return seen.count
    }
}
