// SIMD vs OpenBLAS at the shapes `rtrace replay-train` multiplies. Not part of the package build:
// bench/replay/matbench.sh compiles this one file with swiftc (-O -target-cpu haswell, as the
// RTraceTrain target is built in release) and links the system OpenBLAS (apt libopenblas-dev).
//
// The trainer runs token by token: every matrix product is a matrix–vector product y = W x
// (forward) or dx += Wᵀ dy with dW += dy ⊗ x (backward), W [out, in] row-major, in = width.
// Batching a whole sequence (rows = prompt + response − 1) turns them into small GEMMs; both are timed.
import CBLAS
import Foundation

typealias P = UnsafeMutablePointer<Float>

// MARK: kernels

/// The trainer's current kernel (Model.swift `dot`/`matvec`): four scalar accumulators.
@inline(never) func matvecScalar(_ w: P, _ rows: Int, _ cols: Int, _ x: P, _ y: P) {
    for i in 0..<rows {
        let a = w + i * cols
        var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0
        var j = 0
        while j + 4 <= cols {
            s0 += a[j] * x[j]; s1 += a[j + 1] * x[j + 1]; s2 += a[j + 2] * x[j + 2]; s3 += a[j + 3] * x[j + 3]
            j += 4
        }
        while j < cols { s0 += a[j] * x[j]; j += 1 }
        y[i] = (s0 + s1) + (s2 + s3)
    }
}

/// The trainer's own kernel, `matvecSIMD8`, compiled in from Sources/RTraceTrain/MatvecSIMD8.swift.
@inline(never) func matvecSIMD(_ w: P, _ rows: Int, _ cols: Int, _ x: P, _ y: P) {
    precondition(cols % 8 == 0)
    matvecSIMD8(w, rows, cols, x, y)
}

@inline(never) func matvecBLAS(_ w: P, _ rows: Int, _ cols: Int, _ x: P, _ y: P) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(rows), Int32(cols), 1, w, Int32(cols), x, 1, 0, y, 1)
}

/// The trainer's current backward (Model.swift `matvecBack`).
@inline(never) func backScalar(_ w: P, _ gw: P, _ rows: Int, _ cols: Int, _ x: P, _ dy: P, _ dx: P) {
    for i in 0..<rows {
        let g = dy[i]
        if g == 0 { continue }
        let wr = w + i * cols, gr = gw + i * cols
        for j in 0..<cols {
            dx[j] += wr[j] * g
            gr[j] += g * x[j]
        }
    }
}

@inline(never) func backSIMD(_ w: P, _ gw: P, _ rows: Int, _ cols: Int, _ x: P, _ dy: P, _ dx: P) {
    precondition(cols % 8 == 0)
    let wr = UnsafeMutableRawPointer(w), gr = UnsafeMutableRawPointer(gw)
    let xr = UnsafeRawPointer(x), dxr = UnsafeMutableRawPointer(dx)
    var j = 0
    while j < cols {
        let o = 4 * j
        let xv = xr.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self)
        var acc = dxr.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self)
        for i in 0..<rows {
            let g = SIMD8<Float>(repeating: dy[i])
            let ro = 4 * i * cols + o
            acc.addProduct(wr.loadUnaligned(fromByteOffset: ro, as: SIMD8<Float>.self), g)
            var gv = gr.loadUnaligned(fromByteOffset: ro, as: SIMD8<Float>.self)
            gv.addProduct(g, xv)
            gr.storeBytes(of: gv, toByteOffset: ro, as: SIMD8<Float>.self)
        }
        dxr.storeBytes(of: acc, toByteOffset: o, as: SIMD8<Float>.self)
        j += 8
    }
}

@inline(never) func backBLAS(_ w: P, _ gw: P, _ rows: Int, _ cols: Int, _ x: P, _ dy: P, _ dx: P) {
    cblas_sgemv(CblasRowMajor, CblasTrans, Int32(rows), Int32(cols), 1, w, Int32(cols), dy, 1, 1, dx, 1)
    cblas_sger(CblasRowMajor, Int32(rows), Int32(cols), 1, dy, 1, x, 1, gw, Int32(cols))
}

/// Sequence-batched forward Y[n, out] = X[n, in] Wᵀ: the SIMD matvec per row, or one sgemm.
@inline(never) func gemmSIMD(_ w: P, _ rows: Int, _ cols: Int, _ X: P, _ n: Int, _ Y: P) {
    for t in 0..<n { matvecSIMD(w, rows, cols, X + t * cols, Y + t * rows) }
}
@inline(never) func gemmBLAS(_ w: P, _ rows: Int, _ cols: Int, _ X: P, _ n: Int, _ Y: P) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(rows), Int32(cols), 1, X, Int32(cols), w, Int32(cols), 0, Y, Int32(rows))
}

// MARK: timing

func buf(_ n: Int, _ seed: Int) -> P {
    let p = P.allocate(capacity: n)
    var s = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15
    for i in 0..<n { s = s &* 6364136223846793005 &+ 1442695040888963407; p[i] = Float(Int(s >> 40) % 2001 - 1000) / 1000 }
    return p
}

/// Best of `reps` of the mean time of `inner` calls, in ns.
func time(_ inner: Int, _ reps: Int = 7, _ body: () -> Void) -> Double {
    var best = Double.infinity
    for _ in 0..<reps {
        let t0 = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<inner { body() }
        let t1 = DispatchTime.now().uptimeNanoseconds
        best = min(best, Double(t1 - t0) / Double(inner))
    }
    return best
}

func maxDiff(_ a: P, _ b: P, _ n: Int) -> Float { (0..<n).map { abs(a[$0] - b[$0]) }.max()! }

let args = CommandLine.arguments
let width = args.count > 1 ? Int(args[1])! : 64
let experts = args.count > 2 ? Int(args[2])! : 16
let vocab = 12
let seqRows = args.count > 3 ? Int(args[3])! : 7
let threads = args.count > 4 ? Int(args[4])! : 1
openblas_set_num_threads(Int32(threads))
let cfg = String(cString: openblas_get_config())
print("# matbench: width \(width), experts \(experts), vocab \(vocab), sequence rows \(seqRows); OpenBLAS \(threads) thread(s), \(cfg)")
print("| op | shape [out×in] (×rows) | current scalar (ns) | SIMD8 (ns) | OpenBLAS (ns) | SIMD GFLOP/s | OpenBLAS GFLOP/s | max |SIMD−BLAS| |")
print("|---|---|---|---|---|---|---|---|")
var sink: Float = 0
for (name, rows) in [("attn q/k/v/o, expert w1/w3/w2", width), ("router", experts), ("lm_head", vocab)] {
    let cols = width
    let w = buf(rows * cols, 1), x = buf(cols, 2), y1 = P.allocate(capacity: rows), y2 = P.allocate(capacity: rows), y3 = P.allocate(capacity: rows)
    let inner = max(2000, 4_000_000 / (rows * cols))
    let ts = time(inner) { matvecScalar(w, rows, cols, x, y1) }
    let tv = time(inner) { matvecSIMD(w, rows, cols, x, y2) }
    let tb = time(inner) { matvecBLAS(w, rows, cols, x, y3) }
    let fl = Double(2 * rows * cols)
    print(String(format: "| matvec y=Wx: %@ | %d×%d | %.0f | %.0f | %.0f | %.1f | %.1f | %.1e |", name, rows, cols, ts, tv, tb, fl / tv, fl / tb, Double(maxDiff(y2, y3, rows))))
    sink += y1[0] + y2[0] + y3[0]
    // backward
    let gw1 = buf(rows * cols, 3), gw2 = buf(rows * cols, 3), gw3 = buf(rows * cols, 3)
    let dy = buf(rows, 4), dx1 = buf(cols, 5), dx2 = buf(cols, 5), dx3 = buf(cols, 5)
    let bs = time(inner) { backScalar(w, gw1, rows, cols, x, dy, dx1) }
    let bv = time(inner) { backSIMD(w, gw2, rows, cols, x, dy, dx2) }
    let bb = time(inner) { backBLAS(w, gw3, rows, cols, x, dy, dx3) }
    print(String(format: "| back dx+=Wᵀdy, dW+=dy⊗x: %@ | %d×%d | %.0f | %.0f | %.0f | %.1f | %.1f | — |", name, rows, cols, bs, bv, bb, 2 * fl / bv, 2 * fl / bb))
    sink += dx1[0] + dx2[0] + dx3[0] + gw1[0] + gw2[0] + gw3[0]
    // sequence-batched forward
    for n in [seqRows, 8 * seqRows] {
        let X = buf(n * cols, 6), Y2 = P.allocate(capacity: n * rows), Y3 = P.allocate(capacity: n * rows)
        let inn = max(200, inner / n)
        let gs = time(inn) { for t in 0..<n { matvecScalar(w, rows, cols, X + t * cols, Y2 + t * rows) } }
        let gv = time(inn) { gemmSIMD(w, rows, cols, X, n, Y2) }
        let gb = time(inn) { gemmBLAS(w, rows, cols, X, n, Y3) }
        print(String(format: "| batched Y=XWᵀ: %@ | %d×%d ×%d | %.0f | %.0f | %.0f | %.1f | %.1f | %.1e |", name, rows, cols, n, gs, gv, gb, Double(n) * fl / gv, Double(n) * fl / gb, Double(maxDiff(Y2, Y3, n * rows))))
        sink += Y2[0] + Y3[0]
    }
}
print("checksum \(sink)")
