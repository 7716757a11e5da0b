package harness

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// palette colours the series of a chart, in order.
var palette = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"}

// barChart draws a grouped bar chart by hand: one group per groups[i], one
// bar per series[j] with height values[i][j] (NaN or ≤ 0: no bar). With log
// the y axis is logarithmic (decades). Every bar is a <rect class="bar">
// with a <title> giving its value.
func barChart(title, yLabel string, groups, series []string, values [][]float64, log bool) string {
	const (
		left, right, top, bottom = 70.0, 20.0, 40.0, 90.0
		barW, gap, height        = 16.0, 24.0, 300.0
	)
	groupW := float64(len(series))*barW + gap
	width := left + right + math.Max(math.Max(float64(len(groups))*groupW, 600), 7.5*float64(len([]rune(title))))
	total := top + height + bottom + 20*float64((len(series)+3)/4)
	hi := 0.0
	lo := math.Inf(1)
	for _, row := range values {
		for _, v := range row {
			if v > 0 && !math.IsNaN(v) {
				hi = math.Max(hi, v)
				lo = math.Min(lo, v)
			}
		}
	}
	if hi == 0 {
		hi, lo = 1, 1
	}
	var y func(v float64) float64
	var ticks []float64
	if log {
		dlo, dhi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
		if dhi == dlo {
			dhi++
		}
		y = func(v float64) float64 { return top + height - (math.Log10(v)-dlo)/(dhi-dlo)*height }
		for d := dlo; d <= dhi; d++ {
			ticks = append(ticks, math.Pow(10, d))
		}
	} else {
		step := niceStep(hi / 5)
		ymax := math.Ceil(hi*1.05/step) * step
		y = func(v float64) float64 { return top + height - v/ymax*height }
		for v := 0.0; v <= ymax+step/2; v += step {
			ticks = append(ticks, v)
		}
	}
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">`+"\n", width, total, width, total)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%.0f" y="22" font-size="14" font-weight="bold">%s</text>`+"\n", left, esc(title))
	p(`<text transform="translate(16,%.0f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", top+height/2, esc(yLabel))
	for _, v := range ticks {
		yy := y(v)
		p(`<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, width-right, yy, yy)
		p(`<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, yy+4, fmtTick(v))
	}
	p(`<line x1="%.0f" x2="%.0f" y1="%.0f" y2="%.0f" stroke="black"/>`+"\n", left, width-right, top+height, top+height)
	for i, g := range groups {
		x0 := left + gap/2 + float64(i)*groupW
		for j := range series {
			v := values[i][j]
			if math.IsNaN(v) || v <= 0 {
				continue
			}
			yy := y(v)
			p(`<rect class="bar" x="%.1f" y="%.1f" width="%.0f" height="%.1f" fill="%s"><title>%s, %s: %.3g</title></rect>`+"\n",
				x0+float64(j)*barW, yy, barW-2, top+height-yy, palette[j%len(palette)], esc(g), esc(series[j]), v)
		}
		cx := x0 + float64(len(series))*barW/2
		p(`<text x="%.1f" y="%.0f" text-anchor="end" transform="rotate(-30 %.1f %.0f)">%s</text>`+"\n", cx, top+height+16, cx, top+height+16, esc(g))
	}
	for j, s := range series {
		lx := left + float64(j%4)*150
		ly := top + height + bottom + 20*float64(j/4)
		p(`<rect x="%.0f" y="%.0f" width="12" height="12" fill="%s"/><text x="%.0f" y="%.0f">%s</text>`+"\n", lx, ly-10, palette[j%len(palette)], lx+16, ly, esc(s))
	}
	p("</svg>\n")
	return b.String()
}

func esc(s string) string { return html.EscapeString(s) }

// niceStep rounds a tick step up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e >= x {
			return m * e
		}
	}
	return 10 * e
}

func fmtTick(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gk", v/1e3)
	default:
		return fmt.Sprintf("%g", math.Round(v*1000)/1000)
	}
}

// cpuChart: proxy CPU µs per datagram, grouped by scenario, one bar per
// target (direct has none).
func cpuChart(t *table) string {
	var groups, series []string
	for _, tg := range t.targets {
		if tg != "direct" {
			series = append(series, tg)
		}
	}
	var values [][]float64
	for _, s := range t.res.Options.Scenarios {
		row := make([]float64, len(series))
		any := false
		for j, tg := range series {
			row[j] = t.col(s, tg, cpuOf).med
			any = any || row[j] > 0
		}
		if any {
			groups = append(groups, s)
			values = append(values, row)
		}
	}
	return barChart("Proxy CPU per datagram (median)", "µs per datagram", groups, series, values, false)
}

// latencyChart: round-trip percentiles at 50% load per target, log scale.
func latencyChart(t *table) string {
	series := []string{"p50", "p99", "p99.9"}
	var groups []string
	var values [][]float64
	for _, tg := range t.targets {
		if len(t.by[[2]string{"latency", tg}]) == 0 {
			continue
		}
		groups = append(groups, tg)
		values = append(values, []float64{
			t.col("latency", tg, func(m Measurement) float64 { return m.P50 }).med,
			t.col("latency", tg, func(m Measurement) float64 { return m.P99 }).med,
			t.col("latency", tg, func(m Measurement) float64 { return m.P999 }).med,
		})
	}
	return barChart("Round trip at 50% of each target's maximum rate (median of runs)", "µs (log scale)", groups, series, values, true)
}
