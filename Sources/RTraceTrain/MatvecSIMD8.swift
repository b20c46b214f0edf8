// The training engine's matrix–vector kernel. Standard library only (no imports), so that
// bench/replay/matbench.sh compiles this very file into its benchmark against OpenBLAS.

/// y = W x for Float, W [rows, cols] row-major, cols a multiple of 8: SIMD8 lanes over the input with
/// fused multiply-add, four rows at a time, each row's lanes summed at the end. The hand-written kernel
/// that bench/replay/matbench.sh measures against OpenBLAS (it is faster at these shapes; see bench/replay.md).
@inline(__always) func matvecSIMD8(_ w: UnsafePointer<Float>, _ rows: Int, _ cols: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
    let xr = UnsafeRawPointer(x)
    var i = 0
    while i + 4 <= rows {
        let r0 = UnsafeRawPointer(w + i * cols), r1 = UnsafeRawPointer(w + (i + 1) * cols)
        let r2 = UnsafeRawPointer(w + (i + 2) * cols), r3 = UnsafeRawPointer(w + (i + 3) * cols)
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var j = 0
        while j < cols {
            let o = 4 * j
            let xv = xr.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self)
            a0.addProduct(r0.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self), xv)
            a1.addProduct(r1.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self), xv)
            a2.addProduct(r2.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self), xv)
            a3.addProduct(r3.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self), xv)
            j += 8
        }
        y[i] = a0.sum(); y[i + 1] = a1.sum(); y[i + 2] = a2.sum(); y[i + 3] = a3.sum()
        i += 4
    }
    while i < rows {
        let r = UnsafeRawPointer(w + i * cols)
        var a = SIMD8<Float>()
        var j = 0
        while j < cols {
            a.addProduct(r.loadUnaligned(fromByteOffset: 4 * j, as: SIMD8<Float>.self), xr.loadUnaligned(fromByteOffset: 4 * j, as: SIMD8<Float>.self))
            j += 8
        }
        y[i] = a.sum()
        i += 1
    }
}
