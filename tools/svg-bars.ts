/**
 * Grouped horizontal bar charts as one self-contained SVG string: no browser, no canvas, no
 * dependency. Small multiples: one row per model, one panel per measure, and every panel has
 * its own scale, so a model measured in tens of milliseconds does not flatten one measured in
 * tenths. `npm run bench` draws bench/results.svg with it.
 */

export interface BarSeries {
  name: string;
  /** Any SVG paint, e.g. '#4e79a7'. */
  color: string;
}

export interface BarGroup {
  label: string;
  /** One value per series; undefined or NaN draws no bar and says "n/a". */
  values: Array<number | undefined>;
  /** Text beside each bar; default: the value, formatted by the panel. */
  texts?: Array<string | undefined>;
}

export interface BarPanel {
  title: string;
  groups: BarGroup[];
  /** Value → text (default: 3 significant digits). */
  format?: (v: number) => string;
}

export interface BarRow {
  title: string;
  panels: BarPanel[];
}

export interface BarChart {
  title: string;
  subtitle?: string;
  series: BarSeries[];
  rows: BarRow[];
  /** A line under the chart. */
  footnote?: string;
  /** Total width in px (default 960). */
  width?: number;
}

/** Text safe inside an SVG element or a double-quoted attribute. */
export function escapeXml(s: string): string {
  // XML 1.0 forbids most control characters even when escaped: drop them.
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/** 3 significant digits, without exponent notation for the magnitudes charts show. */
export function sig3(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (v === 0) return '0';
  const digits = Math.max(0, 2 - Math.floor(Math.log10(Math.abs(v))));
  return v.toFixed(Math.min(digits, 6));
}

const M = 16; // outer margin
const GAP = 24; // between panels
const BAR = 14; // bar thickness
const BAR_GAP = 3; // between bars of a group
const GROUP_GAP = 9; // between groups
const LABEL_W = 64; // group labels, left of the bars
const VALUE_W = 130; // room for the value text right of the longest bar
const FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"';

const n2 = (x: number) => Number(x.toFixed(2)).toString();

function text(x: number, y: number, s: string, attrs = ''): string {
  return `<text x="${n2(x)}" y="${n2(y)}"${attrs ? ' ' + attrs : ''}>${escapeXml(s)}</text>`;
}

function panelHeight(p: BarPanel, series: number): number {
  const groups = p.groups.length;
  return 18 + groups * (series * BAR + (series - 1) * BAR_GAP) + Math.max(0, groups - 1) * GROUP_GAP;
}

function drawPanel(p: BarPanel, series: BarSeries[], x: number, y: number, w: number): string[] {
  const out: string[] = [text(x, y + 11, p.title, 'font-size="11" fill="#333"')];
  const fmt = p.format ?? sig3;
  const ok = (v: number | undefined): v is number => v !== undefined && Number.isFinite(v) && v >= 0;
  const max = Math.max(0, ...p.groups.flatMap((g) => g.values.filter(ok)));
  const x0 = x + LABEL_W;
  const span = Math.max(10, w - LABEL_W - VALUE_W);
  let gy = y + 18;
  for (const g of p.groups) {
    const gh = series.length * BAR + (series.length - 1) * BAR_GAP;
    out.push(text(x0 - 6, gy + gh / 2 + 4, g.label, 'font-size="11" text-anchor="end" fill="#333"'));
    series.forEach((s, i) => {
      const v = g.values[i];
      const by = gy + i * (BAR + BAR_GAP);
      const len = ok(v) && max > 0 ? Math.max(1, (v / max) * span) : 0;
      if (len > 0) out.push(`<rect x="${n2(x0)}" y="${n2(by)}" width="${n2(len)}" height="${BAR}" fill="${escapeXml(s.color)}"><title>${escapeXml(`${s.name}, ${g.label}: ${ok(v) ? fmt(v) : 'n/a'}`)}</title></rect>`);
      const label = g.texts?.[i] ?? (ok(v) ? fmt(v) : 'n/a');
      out.push(text(x0 + len + 4, by + BAR - 3, label, 'font-size="10.5" fill="#222"'));
    });
    gy += gh + GROUP_GAP;
  }
  // the zero line
  out.push(`<line x1="${n2(x0)}" y1="${n2(y + 16)}" x2="${n2(x0)}" y2="${n2(gy - GROUP_GAP + 2)}" stroke="#888" stroke-width="1"/>`);
  return out;
}

export function renderBarsSvg(chart: BarChart): string {
  const W = chart.width ?? 960;
  const body: string[] = [];
  let y = M;
  body.push(text(M, y + 14, chart.title, 'font-size="15" font-weight="bold" fill="#111"'));
  y += 22;
  if (chart.subtitle) {
    body.push(text(M, y + 12, chart.subtitle, 'font-size="11.5" fill="#444"'));
    y += 18;
  }
  // legend
  let lx = M;
  for (const s of chart.series) {
    body.push(`<rect x="${n2(lx)}" y="${n2(y + 2)}" width="12" height="12" fill="${escapeXml(s.color)}"/>`);
    body.push(text(lx + 17, y + 12, s.name, 'font-size="11.5" fill="#222"'));
    lx += 17 + 7.5 * s.name.length + 22;
  }
  y += 26;
  for (const row of chart.rows) {
    body.push(`<line x1="${M}" y1="${n2(y)}" x2="${W - M}" y2="${n2(y)}" stroke="#ddd" stroke-width="1"/>`);
    body.push(text(M, y + 17, row.title, 'font-size="13" font-weight="bold" fill="#111"'));
    y += 26;
    const n = Math.max(1, row.panels.length);
    const pw = (W - 2 * M - GAP * (n - 1)) / n;
    let h = 0;
    row.panels.forEach((p, i) => {
      body.push(...drawPanel(p, chart.series, M + i * (pw + GAP), y, pw));
      h = Math.max(h, panelHeight(p, chart.series.length));
    });
    y += h + 12;
  }
  if (chart.footnote) {
    body.push(text(M, y + 12, chart.footnote, 'font-size="10.5" fill="#555"'));
    y += 18;
  }
  const H = Math.ceil(y + M / 2);
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ${FONT}>`,
    `<title>${escapeXml(chart.title)}</title>`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="#fff"/>`,
    ...body,
    '</svg>',
    '',
  ].join('\n');
}
