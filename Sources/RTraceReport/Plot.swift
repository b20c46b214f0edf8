/// One finished plot: an id (HTML anchor and SVG file name), a title, a caption and its SVG.
public struct Plot {
    /// Stable identifier: `[a-z0-9-]`, unique in a report; the file is `ID.svg` with `--format svg`.
    public var id: String
    /// The plot's title (also drawn inside the SVG).
    public var title: String
    /// How to read it: one or two sentences under the plot.
    public var caption: String
    /// Standalone SVG text.
    public var svg: String

    /// Creates a plot.
    public init(id: String, title: String, caption: String, svg: String) {
        self.id = id; self.title = title; self.caption = caption; self.svg = svg
    }
}

/// A group of plots with a heading, a few headline figures and an optional table.
public struct ReportSection {
    /// HTML anchor.
    public var id: String
    /// The heading.
    public var title: String
    /// A sentence or two above the plots.
    public var intro: String
    /// Headline figures shown as label/value cards.
    public var facts: [(label: String, value: String)]
    /// The plots, laid out side by side where they fit.
    public var plots: [Plot]
    /// A table under the plots: header and rows (plain text, escaped when rendered).
    public var table: (caption: String, header: [String], rows: [[String]])?

    /// Creates a section.
    public init(id: String, title: String, intro: String, facts: [(label: String, value: String)] = [], plots: [Plot],
                table: (caption: String, header: [String], rows: [[String]])? = nil) {
        self.id = id; self.title = title; self.intro = intro; self.facts = facts; self.plots = plots; self.table = table
    }
}
