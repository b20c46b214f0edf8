/// A self-contained HTML report: inline CSS and SVG, no scripts, no network access.
public struct ReportPage {
    /// The page heading and `<title>`.
    public var title: String
    /// A line under the title (inputs, date).
    public var subtitle: String
    /// The sections in page order.
    public var sections: [ReportSection]

    /// Creates a page.
    public init(title: String, subtitle: String, sections: [ReportSection]) {
        self.title = title; self.subtitle = subtitle; self.sections = sections
    }

    /// Every plot of every section, in page order.
    public var plots: [Plot] { sections.flatMap(\.plots) }

    static let css = """
        body{font-family:"DejaVu Sans","Liberation Sans",Helvetica,Arial,sans-serif;color:#1a1a1a;background:#f6f6f4;margin:0}
        main{max-width:1500px;margin:0 auto;padding:16px 20px 40px}
        h1{font-size:24px;margin:4px 0 2px}h2{font-size:19px;margin:30px 0 6px;border-bottom:2px solid #ddd;padding-bottom:4px}
        p.sub{color:#555;margin:0 0 10px;font-size:13px}p.intro{font-size:13.5px;max-width:1100px;margin:6px 0 12px}
        nav{font-size:13px;margin:8px 0 4px}nav a{margin-right:14px;color:#0b3c8c}
        .facts{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0 14px}
        .fact{background:#fff;border:1px solid #ddd;border-radius:6px;padding:7px 12px;min-width:130px}
        .fact b{display:block;font-size:19px}.fact span{font-size:11.5px;color:#555}
        .plots{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
        figure{background:#fff;border:1px solid #ddd;border-radius:6px;margin:0;padding:5px;max-width:100%}
        figure svg{display:block;max-width:100%;height:auto}
        figcaption{font-size:12px;color:#444;max-width:590px;padding:4px 6px 2px;line-height:1.35}
        table{border-collapse:collapse;background:#fff;font-size:12.5px;margin-top:14px}
        th,td{border:1px solid #ddd;padding:4px 10px;text-align:right}th{background:#eee}caption{text-align:left;font-weight:bold;padding:4px 0}
        footer{color:#777;font-size:11.5px;margin-top:30px}
        """

    /// The page as one HTML document.
    public var html: String {
        var s = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        s += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        s += "<title>\(xmlEscape(title))</title>\n<style>\n\(Self.css)\n</style>\n</head>\n<body>\n<main>\n"
        s += "<h1>\(xmlEscape(title))</h1>\n<p class=\"sub\">\(xmlEscape(subtitle))</p>\n"
        if sections.count > 1 {
            s += "<nav>" + sections.map { "<a href=\"#\(xmlEscape($0.id))\">\(xmlEscape($0.title))</a>" }.joined() + "</nav>\n"
        }
        for sec in sections {
            s += "<section id=\"\(xmlEscape(sec.id))\">\n<h2>\(xmlEscape(sec.title))</h2>\n"
            s += "<p class=\"intro\">\(xmlEscape(sec.intro))</p>\n"
            if !sec.facts.isEmpty {
                s += "<div class=\"facts\">" + sec.facts.map { "<div class=\"fact\"><b>\(xmlEscape($0.value))</b><span>\(xmlEscape($0.label))</span></div>" }.joined() + "</div>\n"
            }
            s += "<div class=\"plots\">\n"
            for p in sec.plots {
                s += "<figure id=\"\(xmlEscape(p.id))\" data-plot=\"\(xmlEscape(p.id))\">\n\(p.svg)<figcaption>\(xmlEscape(p.caption))</figcaption>\n</figure>\n"
            }
            s += "</div>\n"
            if let t = sec.table {
                s += "<table><caption>\(xmlEscape(t.caption))</caption>\n<tr>" + t.header.map { "<th>\(xmlEscape($0))</th>" }.joined() + "</tr>\n"
                for r in t.rows { s += "<tr>" + r.map { "<td>\(xmlEscape($0))</td>" }.joined() + "</tr>\n" }
                s += "</table>\n"
            }
            s += "</section>\n"
        }
        s += "<footer>Made by rtrace report. Colour scales: viridis (luminance rises with value, so they print in grey). Hover a bar or cell for its exact value.</footer>\n"
        s += "</main>\n</body>\n</html>\n"
        return s
    }
}
