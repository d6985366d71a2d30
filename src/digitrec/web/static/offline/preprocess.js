// Neural Digit Recognizer, offline mode: the server's preprocessing (preprocess.py) for a
// drawing exported by the page, ported step by step so the model sees the same 28x28.
//
// Only the path a canvas export takes is ported: dark strokes on a transparent
// background, so the ink is the alpha channel (ink_map's transparent branch), at most
// `work_side` pixels a side (no reduction). Anything else (an opaque image, a photo)
// throws PreprocessError "needs_server": such images go to the server. Every parameter
// comes from the model's metadata (GET /api/v1/model/offline): `spec` is its
// `preprocessing`, `steps` its `pipeline`; the few literals below are the ones
// preprocess.py writes inline, each named after the line it mirrors.
//
// Arithmetic follows numpy's float32 where the server works in float32 (Math.fround), and
// Pillow's resampling (Resample.c: separable, horizontal pass first, coefficients in
// double, a support scaled by the downscale factor) where the server resizes.

const OPAQUE_ALPHA = 250; // _to_float_channels: alpha.min() >= this is an opaque image
const HALF_LEVEL = 127.5; // _to_float_channels: border alpha median below it = transparent
const BORDER_SHARE = 20; // _border_strips: edges a 1/20 of the shorter side wide
const UNEVEN_EDGES = 0.08; // ink_map: edges' medians further apart need lighting flattened
const NOISE_SIGMA = 1.4826; // ink_map: MAD to standard deviation
const NOISE_FLOOR_MAX = 0.25; // ink_map: the floor is min(0.25, 3 * noise)
const NOISE_FLOOR_SIGMAS = 3;
const SPECK_SIDE = 96; // _ink_bbox: specks are removed in images bigger than this
const LIGHTING_SIDE = 64; // _flatten_lighting: the paper is estimated on a copy this big
const LIGHTING_WINDOW = 15; // _flatten_lighting: min then max filter, wider than a stroke
const BLUR_PASSES = 3; // Pillow's GaussianBlur: three box blurs
const PRECISION_BITS = 22; // Pillow's 8-bit resampling: fixed-point weights (Resample.c)

const f32 = Math.fround;
const F32_UNIT = f32(1 / 255);

export class PreprocessError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const blank = (message) => new PreprocessError("blank_image", `the image looks blank: ${message}`);

// Python's round() and numpy's rint: halves go to the even neighbour.
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 ? 2 * Math.round(x / 2) : r;
}

// A float32 image: h rows of w values.
class Plane {
  constructor(w, h, data = new Float32Array(w * h)) {
    this.w = w;
    this.h = h;
    this.data = data;
  }

  crop(top, bottom, left, right) {
    const out = new Plane(right - left, bottom - top);
    for (let y = top; y < bottom; y += 1) {
      out.data.set(this.data.subarray(y * this.w + left, y * this.w + right), (y - top) * out.w);
    }
    return out;
  }

  padded(n) {
    const out = new Plane(this.w + 2 * n, this.h + 2 * n);
    for (let y = 0; y < this.h; y += 1) {
      out.data.set(this.data.subarray(y * this.w, (y + 1) * this.w), (y + n) * out.w + n);
    }
    return out;
  }
}

// --- medians and maxima as preprocess.py takes them ----------------------------------------

function median(values, isInt) {
  const a = Array.from(values).sort((x, y) => x - y);
  const k = a.length >> 1;
  if (a.length % 2) return a[k];
  return isInt ? (a[k - 1] + a[k]) / 2 : f32(f32(a[k - 1] + a[k]) / 2);
}

function borderStrips(data, w, h) {
  const bw = Math.max(1, Math.floor(Math.min(w, h) / BORDER_SHARE));
  const top = [], bottom = [], left = [], right = [];
  for (let y = 0; y < bw; y += 1) {
    for (let x = 0; x < w; x += 1) {
      top.push(data[y * w + x]);
      bottom.push(data[(h - bw + y) * w + x]);
    }
  }
  for (let y = 0; y < h; y += 1) {
    for (let x = 0; x < bw; x += 1) {
      left.push(data[y * w + x]);
      right.push(data[y * w + w - bw + x]);
    }
  }
  return [top, bottom, left, right];
}

// _robust_max: the highest value held by at least two neighbouring pixels.
function robustMax(p) {
  const { w, h, data: a } = p;
  let peak = -Infinity;
  let at = 0;
  for (let i = 0; i < a.length; i += 1) {
    if (a[i] > peak) {
      peak = a[i];
      at = i;
    }
  }
  const y = Math.floor(at / w);
  const x = at % w;
  if (y === 0 || y === h - 1 || x === 0 || x === w - 1) return peak;
  if (Math.max(a[at - w], a[at + w], a[at - 1], a[at + 1]) >= peak) return peak;
  let best = -Infinity;
  for (let i = 0; i < w; i += 1) best = Math.max(best, a[i], a[(h - 1) * w + i]);
  for (let j = 0; j < h; j += 1) best = Math.max(best, a[j * w], a[j * w + w - 1]);
  for (let j = 1; j < h - 1; j += 1) {
    for (let i = 1; i < w - 1; i += 1) {
      const c = j * w + i;
      const around = Math.max(a[c - w], a[c + w], a[c - 1], a[c + 1]);
      best = Math.max(best, Math.min(around, a[c]));
    }
  }
  return best;
}

// --- 2. ink map (the transparent-background branch) ----------------------------------------

function inkMap(imageData, steps) {
  const { width: w, height: h, data: rgba } = imageData;
  if (Math.max(w, h) > steps.work_side) {
    throw new PreprocessError("needs_server", "the image is bigger than the working size");
  }
  const alpha8 = new Uint8Array(w * h);
  let lowest = 255;
  for (let i = 0; i < alpha8.length; i += 1) {
    alpha8[i] = rgba[4 * i + 3];
    lowest = Math.min(lowest, alpha8[i]);
  }
  if (lowest >= OPAQUE_ALPHA || median(borderStrips(alpha8, w, h).flat(), true) >= HALF_LEVEL) {
    throw new PreprocessError("needs_server", "not a drawing on a transparent background");
  }
  const ink = new Plane(w, h);
  for (let i = 0; i < alpha8.length; i += 1) ink.data[i] = f32(alpha8[i] * F32_UNIT);
  const strips = borderStrips(ink.data, w, h);
  const levels = strips.map((strip) => median(strip, false));
  let border;
  let level;
  if (Math.max(...levels) - Math.min(...levels) > UNEVEN_EDGES) {
    flattenLighting(ink, alpha8); // ink along an edge looks like a shadow there
    border = borderStrips(ink.data, w, h).flat();
    level = median(border, false);
  } else {
    border = strips.flat();
    level = median(border, false);
    const shift = f32(level);
    if (level !== 0) {
      for (let i = 0; i < ink.data.length; i += 1) ink.data[i] = f32(ink.data[i] - shift);
    }
  }
  const level32 = f32(level);
  const noise = NOISE_SIGMA * median(border.map((v) => Math.abs(f32(v - level32))), false);
  return stretch(ink, Math.min(NOISE_FLOOR_MAX, NOISE_FLOOR_SIGMAS * noise), steps);
}

// _flatten_lighting: subtract the paper's level, estimated on a small 8-bit copy by an
// opening (min then max filter) and Pillow's GaussianBlur, scaled back up. The 8-bit
// copy of the alpha ink is the alpha itself (rint(alpha / 255 * 255) gives back all 256).
function flattenLighting(ink, alpha8) {
  const { w, h } = ink;
  const scale = LIGHTING_SIDE / Math.max(w, h);
  const sw = Math.max(1, roundHalfEven(w * scale));
  const sh = Math.max(1, roundHalfEven(h * scale));
  const small = resize8(alpha8, w, h, sw, sh, "box");
  const opened = window8(window8(small, sw, sh, Math.min), sw, sh, Math.max);
  const blurred = gaussianBlur8(opened, sw, sh, LIGHTING_WINDOW / 2);
  const paper = resize8(blurred, sw, sh, w, h, "bilinear");
  for (let i = 0; i < ink.data.length; i += 1) {
    ink.data[i] = f32(ink.data[i] - f32(paper[i] / 255));
  }
}

// _window: min or max over a size x size window (edges repeated), rows then columns.
function window8(a, w, h, op) {
  const r = LIGHTING_WINDOW >> 1;
  const rows = new Uint8Array(w * h);
  for (let y = 0; y < h; y += 1) {
    for (let x = 0; x < w; x += 1) {
      let v = a[y * w + x];
      for (let d = -r; d <= r; d += 1) v = op(v, a[Math.min(h - 1, Math.max(0, y + d)) * w + x]);
      rows[y * w + x] = v;
    }
  }
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y += 1) {
    for (let x = 0; x < w; x += 1) {
      let v = rows[y * w + x];
      for (let d = -r; d <= r; d += 1) v = op(v, rows[y * w + Math.min(w - 1, Math.max(0, x + d))]);
      out[y * w + x] = v;
    }
  }
  return out;
}

// Pillow's 8-bit resize (an "L" image): weights in fixed point, each pass rounded to 8 bits.
function resize8(a, w, h, newW, newH, filterName) {
  if (w === newW && h === newH) return a.slice();
  const filter = FILTERS[filterName];
  const one = 2 ** PRECISION_BITS;
  const fixed = (cs) => cs.map(({ xmin, k }) => ({
    xmin, k: Array.from(k, (v) => Math.trunc(v < 0 ? v * one - 0.5 : v * one + 0.5)),
  }));
  const clip8 = (ss) => Math.min(255, Math.max(0, Math.floor(ss / one)));
  let src = a;
  let sw = w;
  if (newW !== w) {
    const cs = fixed(coefficients(w, newW, filter));
    const out = new Uint8Array(newW * h);
    for (let y = 0; y < h; y += 1) {
      for (let xx = 0; xx < newW; xx += 1) {
        const { xmin, k } = cs[xx];
        let ss = one / 2;
        for (let x = 0; x < k.length; x += 1) ss += src[y * w + x + xmin] * k[x];
        out[y * newW + xx] = clip8(ss);
      }
    }
    src = out;
    sw = newW;
  }
  if (newH !== h) {
    const cs = fixed(coefficients(h, newH, filter));
    const out = new Uint8Array(sw * newH);
    for (let yy = 0; yy < newH; yy += 1) {
      const { xmin: ymin, k } = cs[yy];
      for (let x = 0; x < sw; x += 1) {
        let ss = one / 2;
        for (let y = 0; y < k.length; y += 1) ss += src[(y + ymin) * sw + x] * k[y];
        out[yy * sw + x] = clip8(ss);
      }
    }
    src = out;
  }
  return src;
}

// ImageFilter.GaussianBlur(radius) on an "L" image: three box blurs of an extended box
// radius (Pillow's BoxBlur.c, after Gwosdek et al. 2011), in single precision.
function gaussianBlur8(a, w, h, radius) {
  const sigma2 = f32(f32(radius * radius) / BLUR_PASSES);
  const L = f32(Math.sqrt(12 * sigma2 + 1));
  const l = f32(Math.floor((L - 1) / 2));
  let ext = f32((2 * l + 1) * f32(l * (l + 1) - 3 * sigma2));
  ext = f32(ext / f32(6 * f32(sigma2 - (l + 1) * (l + 1))));
  const boxRadius = f32(l + ext);
  let out = a.slice();
  for (let pass = 0; pass < BLUR_PASSES; pass += 1) out = boxBlurRows(out, w, h, boxRadius);
  let t = transpose8(out, w, h);
  for (let pass = 0; pass < BLUR_PASSES; pass += 1) t = boxBlurRows(t, h, w, boxRadius);
  return transpose8(t, h, w);
}

function transpose8(a, w, h) {
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y += 1) for (let x = 0; x < w; x += 1) out[x * h + y] = a[y * w + x];
  return out;
}

// ImagingLineBoxBlur8 on every row: a running sum, the two far pixels weighted by the
// radius's fractional part, edges repeated; 24-bit fixed point.
function boxBlurRows(a, w, h, floatRadius) {
  const radius = Math.trunc(floatRadius);
  const ww = Math.trunc(f32(2 ** 24 / f32(f32(floatRadius * 2) + 1)));
  const fw = Math.floor((2 ** 24 - (radius * 2 + 1) * ww) / 2);
  const edgeA = Math.min(radius + 1, w);
  const edgeB = Math.max(w - radius - 1, 0);
  const lastx = w - 1;
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y += 1) {
    const line = a.subarray(y * w, (y + 1) * w);
    const put = (x, acc, left, right) => {
      const bulk = acc * ww + (line[left] + line[right]) * fw;
      out[y * w + x] = Math.floor((bulk + 2 ** 23) / 2 ** 24);
    };
    let acc = line[0] * (radius + 1);
    for (let x = 0; x < edgeA - 1; x += 1) acc += line[x];
    acc += line[lastx] * (radius - edgeA + 1);
    if (edgeA <= edgeB) {
      for (let x = 0; x < edgeA; x += 1) {
        acc += line[x + radius] - line[0];
        put(x, acc, 0, x + radius + 1);
      }
      for (let x = edgeA; x < edgeB; x += 1) {
        acc += line[x + radius] - line[x - radius - 1];
        put(x, acc, x - radius - 1, x + radius + 1);
      }
      for (let x = edgeB; x <= lastx; x += 1) {
        acc += line[lastx] - line[x - radius - 1];
        put(x, acc, x - radius - 1, lastx);
      }
    } else {
      for (let x = 0; x < edgeB; x += 1) {
        acc += line[x + radius] - line[0];
        put(x, acc, 0, x + radius + 1);
      }
      for (let x = edgeB; x < edgeA; x += 1) {
        acc += line[lastx] - line[0];
        put(x, acc, 0, lastx);
      }
      for (let x = edgeA; x <= lastx; x += 1) {
        acc += line[lastx] - line[x - radius - 1];
        put(x, acc, x - radius - 1, lastx);
      }
    }
  }
  return out;
}

function stretch(ink, floor, steps) {
  const a = ink.data;
  for (let i = 0; i < a.length; i += 1) if (!(a[i] >= 0)) a[i] = 0;
  const peak = robustMax(ink);
  if (peak < steps.min_contrast) throw blank("no ink stands out from the background");
  const floor32 = f32(floor);
  const rest32 = f32(1 - floor);
  for (let i = 0; i < a.length; i += 1) {
    let v = f32(a[i] / peak);
    if (floor > 0) v = f32(f32(v - floor32) / rest32);
    a[i] = Math.min(1, Math.max(0, v));
  }
  return ink;
}

// --- 3. MNIST layout -------------------------------------------------------------------

function maskBox(mask, w, h) {
  let top = h, bottom = -1, left = w, right = -1, count = 0;
  for (let y = 0; y < h; y += 1) {
    for (let x = 0; x < w; x += 1) {
      if (mask[y * w + x]) {
        count += 1;
        top = Math.min(top, y);
        bottom = Math.max(bottom, y);
        left = Math.min(left, x);
        right = Math.max(right, x);
      }
    }
  }
  return { top, bottom: bottom + 1, left, right: right + 1, count };
}

// 3x3 binary erosion or dilation, pixels outside repeating the edge (np.pad "edge").
function binary3(mask, w, h, erode) {
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y += 1) {
    for (let x = 0; x < w; x += 1) {
      let v = erode ? 1 : 0;
      for (let dy = -1; dy <= 1; dy += 1) {
        const yy = Math.min(h - 1, Math.max(0, y + dy));
        for (let dx = -1; dx <= 1; dx += 1) {
          const m = mask[yy * w + Math.min(w - 1, Math.max(0, x + dx))];
          v = erode ? v & m : v | m;
        }
      }
      out[y * w + x] = v;
    }
  }
  return out;
}

function inkBox(ink, steps) {
  const { w, h, data } = ink;
  const mask = data.map((v) => (v > steps.mark_level ? 1 : 0));
  let box = maskBox(mask, w, h);
  let count = box.count;
  if (Math.min(w, h) > SPECK_SIDE && box.count) {
    const top = Math.max(0, box.top - 1);
    const left = Math.max(0, box.left - 1);
    const bottom = Math.min(h, box.bottom + 1);
    const right = Math.min(w, box.right + 1);
    const rw = right - left;
    const rh = bottom - top;
    const region = new Uint8Array(rw * rh);
    for (let y = 0; y < rh; y += 1) {
      for (let x = 0; x < rw; x += 1) region[y * rw + x] = mask[(y + top) * w + x + left];
    }
    const opened = binary3(binary3(region, rw, rh, true), rw, rh, false);
    const kept = maskBox(opened, rw, rh);
    if (kept.count >= Math.max(steps.min_ink_pixels, Math.floor(box.count / 2))) {
      box = {
        top: top + kept.top, bottom: top + kept.bottom,
        left: left + kept.left, right: left + kept.right, count: kept.count,
      };
      count = kept.count;
    }
  }
  if (count < steps.min_ink_pixels && w * h > 4 * steps.min_ink_pixels) {
    throw blank("too little ink to read a digit");
  }
  if (box.bottom <= box.top) throw blank("no ink found");
  return box;
}

// Pillow's resampling filters (Resample.c) and their supports.
const FILTERS = {
  box: { support: 0.5, at: (x) => (x > -0.5 && x <= 0.5 ? 1 : 0) },
  bilinear: { support: 1, at: (x) => (Math.abs(x) < 1 ? 1 - Math.abs(x) : 0) },
  lanczos: {
    support: 3,
    at: (x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0),
  },
};

function sinc(x) {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

// precompute_coeffs: for each output pixel, the first input pixel and normalised weights.
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(1, scale);
  const support = filter.support * filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx += 1) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const k = new Float64Array(Math.max(0, xmax));
    let ww = 0;
    for (let x = 0; x < xmax; x += 1) {
      k[x] = filter.at((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    if (ww !== 0) for (let x = 0; x < xmax; x += 1) k[x] /= ww;
    out.push({ xmin, k });
  }
  return out;
}

// Image.resize of a mode "F" image: horizontal pass, then vertical, each stored in float32.
function resize(p, newW, newH, filterName) {
  if (p.w === newW && p.h === newH) return new Plane(p.w, p.h, p.data.slice());
  const filter = FILTERS[filterName];
  let src = p;
  if (newW !== p.w) {
    const cs = coefficients(p.w, newW, filter);
    const out = new Plane(newW, p.h);
    for (let y = 0; y < p.h; y += 1) {
      for (let xx = 0; xx < newW; xx += 1) {
        const { xmin, k } = cs[xx];
        let ss = 0;
        for (let x = 0; x < k.length; x += 1) ss += src.data[y * p.w + x + xmin] * k[x];
        out.data[y * newW + xx] = ss;
      }
    }
    src = out;
  }
  if (newH !== p.h) {
    const cs = coefficients(p.h, newH, filter);
    const out = new Plane(src.w, newH);
    for (let yy = 0; yy < newH; yy += 1) {
      const { xmin: ymin, k } = cs[yy];
      for (let x = 0; x < src.w; x += 1) {
        let ss = 0;
        for (let y = 0; y < k.length; y += 1) ss += src.data[(y + ymin) * src.w + x] * k[y];
        out.data[yy * src.w + x] = ss;
      }
    }
    src = out;
  }
  return src;
}

// _fit: the longer side scaled to `box` (LANCZOS down, BILINEAR up), clipped to [0, 1].
function fit(crop, box) {
  const ratio = box / Math.max(crop.w, crop.h);
  const newW = Math.max(1, roundHalfEven(crop.w * ratio));
  const newH = Math.max(1, roundHalfEven(crop.h * ratio));
  const fitted = resize(crop, newW, newH, ratio < 1 ? "lanczos" : "bilinear");
  for (let i = 0; i < fitted.data.length; i += 1) {
    fitted.data[i] = Math.min(1, Math.max(0, fitted.data[i]));
  }
  return fitted;
}

// stroke_width: 2 * area / perimeter relative to the longer side of the ink's box.
export function strokeWidth(p, steps) {
  let ink = p;
  const box = maskBox(p.data.map((v) => (v > steps.mark_level ? 1 : 0)), p.w, p.h);
  if (box.count) ink = p.crop(box.top, box.bottom, box.left, box.right);
  const q = ink.padded(1);
  const at = (y, x) => q.data[y * q.w + x];
  let perimeter = 0;
  for (let y = 0; y < q.h - 1; y += 1) {
    for (let x = 0; x < q.w - 1; x += 1) {
      const dx = at(y, x + 1) - at(y, x) + at(y + 1, x + 1) - at(y + 1, x);
      const dy = at(y + 1, x) - at(y, x) + at(y + 1, x + 1) - at(y, x + 1);
      perimeter += f32(Math.hypot(f32(dx), f32(dy)));
    }
  }
  perimeter /= 2;
  if (perimeter === 0) return 0;
  let sum = 0;
  let peak = -Infinity;
  for (const v of ink.data) {
    sum += v;
    peak = Math.max(peak, v);
  }
  return (2 * sum * peak) / perimeter / Math.max(ink.w, ink.h);
}

function blockMax(p, factor) {
  const out = new Plane(Math.ceil(p.w / factor), Math.ceil(p.h / factor));
  for (let y = 0; y < p.h; y += 1) {
    for (let x = 0; x < p.w; x += 1) {
      const o = Math.floor(y / factor) * out.w + Math.floor(x / factor);
      out.data[o] = Math.max(out.data[o], p.data[y * p.w + x]);
    }
  }
  return out;
}

// _morph_step: one 3x3 square or cross of min (erode) or max (dilate); outside is paper.
function morphStep(p, op, square) {
  const q = p.padded(1);
  const out = new Plane(p.w, p.h);
  const at = (y, x) => q.data[y * q.w + x];
  for (let y = 0; y < p.h; y += 1) {
    for (let x = 0; x < p.w; x += 1) {
      const column = (cx) => op(op(at(y, cx), at(y + 1, cx)), at(y + 2, cx));
      out.data[y * p.w + x] = square
        ? op(op(column(x), column(x + 1)), column(x + 2))
        : op(op(column(x + 1), at(y + 1, x)), at(y + 1, x + 2));
    }
  }
  return out;
}

function morph(p, radius, op) {
  const stepsWhole = Math.trunc(radius);
  let a = p;
  for (let step = 0; step < stepsWhole; step += 1) a = morphStep(a, op, step % 2 === 0);
  const frac = radius - stepsWhole;
  if (frac > 0) {
    const next = morphStep(a, op, stepsWhole % 2 === 0);
    const frac32 = f32(frac);
    const out = new Plane(a.w, a.h);
    for (let i = 0; i < a.data.length; i += 1) {
      out.data[i] = f32(a.data[i] + f32(frac32 * f32(next.data[i] - a.data[i])));
    }
    a = out;
  }
  return a;
}

// restroke: strokes eroded or dilated from `width` to `target` on a copy `restroke_side` big.
function restroke(crop, width, target, steps) {
  const side = steps.restroke_side;
  const factor = Math.ceil(Math.max(crop.w, crop.h) / side);
  let work;
  if (width < target && factor > 1) {
    work = blockMax(crop, factor);
  } else {
    const scale = side / Math.max(crop.w, crop.h);
    const w = Math.max(1, roundHalfEven(crop.w * scale));
    const h = Math.max(1, roundHalfEven(crop.h * scale));
    work = resize(crop, w, h, "bilinear");
  }
  const shift = ((width - target) * Math.max(work.w, work.h)) / (2 * (1 - target));
  work = work.padded(Math.ceil(Math.max(0, -shift)) + 1);
  work = morph(work, Math.abs(shift), shift > 0 ? Math.min : Math.max);
  const box = maskBox(work.data.map((v) => (v > steps.mark_level ? 1 : 0)), work.w, work.h);
  if (box.count < steps.min_ink_pixels) return crop;
  return work.crop(box.top, box.bottom, box.left, box.right);
}

function layout(ink, spec, steps) {
  const { top, bottom, left, right } = inkBox(ink, steps);
  const crop = ink.crop(top, bottom, left, right);
  let fitted = fit(crop, spec.box);
  if (spec.stroke_band) {
    const [low, high] = spec.stroke_band;
    const width = strokeWidth(fitted, steps);
    if (!(low <= width && width <= high)) {
      const target = width < low ? (low + high) / 2 : high;
      fitted = fit(restroke(crop, width, target, steps), spec.box);
    }
  }
  const size = spec.size;
  let mass = 0, my = 0, mx = 0;
  const cols = new Float64Array(fitted.w);
  for (let y = 0; y < fitted.h; y += 1) {
    let row = 0;
    for (let x = 0; x < fitted.w; x += 1) {
      const v = fitted.data[y * fitted.w + x];
      row = f32(row + v);
      cols[x] = f32(cols[x] + v);
    }
    mass += row;
    my += row * y;
  }
  cols.forEach((c, x) => { mx += c * x; });
  if (!(mass > 0)) throw blank("after scaling");
  const centre = Math.floor(size / 2);
  const clip = (v, hi) => Math.min(Math.max(v, 0), hi);
  const y0 = clip(roundHalfEven(centre - my / mass), size - fitted.h);
  const x0 = clip(roundHalfEven(centre - mx / mass), size - fitted.w);
  const canvas = new Float32Array(size * size);
  for (let y = 0; y < fitted.h; y += 1) {
    canvas.set(fitted.data.subarray(y * fitted.w, (y + 1) * fitted.w), (y0 + y) * size + x0);
  }
  return canvas;
}

// A drawing's RGBA pixels -> { image: the size x size uint8 picture the model sees,
// tensor: it normalised with the manifest's mean and std }, as preprocess.prepare does.
export function prepareDrawing(imageData, spec, steps) {
  if (spec.centering !== "mass") {
    throw new PreprocessError("needs_server", `centering '${spec.centering}' is not ported`);
  }
  const canvas = layout(inkMap(imageData, steps), spec, steps);
  const image = new Uint8Array(canvas.length);
  const tensor = new Float32Array(canvas.length);
  const mean = f32(spec.mean);
  const std = f32(spec.std);
  for (let i = 0; i < canvas.length; i += 1) {
    image[i] = roundHalfEven(f32(canvas[i] * 255));
    tensor[i] = f32(f32(f32(image[i] / 255) - mean) / std);
  }
  return { image, tensor };
}
