/// A max-heap of values by integer priority (the join's spill order: the record needed last first).
struct MaxHeap<Value> {
    private(set) var items: [(priority: Int, value: Value)] = []

    var count: Int { items.count }

    mutating func push(_ priority: Int, _ value: Value) {
        items.append((priority, value))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[parent].priority < items[i].priority else { break }
            items.swapAt(parent, i)
            i = parent
        }
    }

    /// Removes and returns the item of highest priority.
    mutating func pop() -> (priority: Int, value: Value)? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count && items[l].priority > items[m].priority { m = l }
                if r < items.count && items[r].priority > items[m].priority { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}
