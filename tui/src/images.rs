//! Images in the terminal: decoding off the UI thread, and a cache of encoded pictures.
//!
//! Decoding a large PNG or rasterising an SVG takes tens of milliseconds, too long for a
//! frame, so the widgets only *look up* a picture for (path, cell size) and note what they
//! missed ([`Images::wanted`]); the event loop then starts the decode on a blocking thread
//! ([`Images::start_wanted`]) and the finished picture arrives through a channel. The cache
//! is render-side data, not application state: it holds terminal encodings (kitty, sixel,
//! iTerm2 or unicode half-blocks, whatever ratatui-image's `Picker` chose for this terminal).
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use image::DynamicImage;
use image::imageops::FilterType;
use ratatui::layout::Size;
use ratatui_image::Resize;
use ratatui_image::picker::Picker;
use ratatui_image::protocol::Protocol;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// Entries kept; more are dropped oldest-request-first (a queue shows one image at a time).
const CACHE_CAP: usize = 48;
/// SVGs are rasterised to fit this many pixels on their longer side.
const SVG_PIXELS: f32 = 512.0;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageKey {
    pub path: String,
    pub width: u16,
    pub height: u16,
}

pub enum Slot {
    Loading,
    Ready(Protocol),
    /// Why it cannot be shown (missing file, corrupt data): the widget shows a placeholder
    /// with the file name instead.
    Failed(String),
}

/// Why an image could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode image: {0}")]
    Decode(#[from] image::ImageError),
    #[error("cannot parse SVG: {0}")]
    Svg(String),
    #[error("cannot encode for the terminal: {0}")]
    Encode(String),
    #[error("cannot fetch it from the daemon: {0}")]
    Remote(String),
}

/// Pictures the TUI cannot read locally (the daemon runs on another machine, e.g. behind
/// `ssh -L`) are asked of the daemon (`sotalign/getImage`, downscaled PNG) over a second
/// connection of their own, so big answers never delay the review queue's calls.
pub struct Remote {
    addr: String,
    token: Option<String>,
    client: Mutex<Option<sotalign_protocol::Client<TcpStream, TcpStream>>>,
}

impl Remote {
    pub fn new(addr: String, token: Option<String>) -> Self {
        Remote {
            addr,
            token,
            client: Mutex::new(None),
        }
    }

    /// The picture at `path` (a path on the daemon's machine) fitting `w` x `h` pixels.
    pub fn fetch(&self, path: &str, w: u32, h: u32) -> Result<DynamicImage, String> {
        use base64::Engine as _;
        use sotalign_protocol::methods::GetImage;
        use sotalign_protocol::types::GetImageParams;
        let mut guard = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let s = TcpStream::connect(&self.addr).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            let mut c =
                sotalign_protocol::Client::new(s.try_clone().map_err(|e| e.to_string())?, s);
            c.initialize("sotalign-tui-images", self.token.clone())
                .map_err(|e| e.to_string())?;
            *guard = Some(c);
        }
        let Some(c) = guard.as_mut() else {
            return Err("no connection".into());
        };
        let r = c.call::<GetImage>(GetImageParams {
            sample: None,
            path: Some(path.to_owned()),
            max_width: w,
            max_height: h,
        });
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                if e.code().is_none() {
                    // Transport trouble: reconnect next time.
                    *guard = None;
                }
                return Err(e.to_string());
            }
        };
        let png = base64::engine::general_purpose::STANDARD
            .decode(r.data)
            .map_err(|e| e.to_string())?;
        image::load_from_memory(&png).map_err(|e| e.to_string())
    }
}

pub struct Images {
    picker: Picker,
    remote: Option<Arc<Remote>>,
    slots: HashMap<ImageKey, Slot>,
    order: Vec<ImageKey>,
    wanted: RefCell<Vec<ImageKey>>,
    tx: UnboundedSender<(ImageKey, Result<Protocol, String>)>,
    rx: UnboundedReceiver<(ImageKey, Result<Protocol, String>)>,
}

impl Images {
    pub fn new(picker: Picker) -> Self {
        let (tx, rx) = unbounded_channel();
        Self {
            picker,
            remote: None,
            slots: HashMap::new(),
            order: Vec::new(),
            wanted: RefCell::new(Vec::new()),
            tx,
            rx,
        }
    }

    /// Ask the daemon for pictures whose path cannot be read here.
    pub fn set_remote(&mut self, remote: Remote) {
        self.remote = Some(Arc::new(remote));
    }

    /// Which terminal graphics protocol is in use (for the title bar).
    pub fn protocol_name(&self) -> &'static str {
        use ratatui_image::picker::ProtocolType::*;
        match self.picker.protocol_type() {
            Halfblocks => "half-blocks",
            Sixel => "sixel",
            Kitty => "kitty",
            Iterm2 => "iTerm2",
        }
    }

    /// The picture for `path` at `size` cells, if decoded; otherwise it is noted as wanted.
    pub fn get(&self, path: &str, size: Size) -> Option<&Slot> {
        let key = ImageKey {
            path: path.to_owned(),
            width: size.width,
            height: size.height,
        };
        let slot = self.slots.get(&key);
        if slot.is_none() {
            let mut w = self.wanted.borrow_mut();
            if !w.contains(&key) {
                w.push(key);
            }
        }
        slot
    }

    /// Start decoding what the last frame wanted. Returns true if anything started.
    pub fn start_wanted(&mut self) -> bool {
        let wanted = std::mem::take(&mut *self.wanted.borrow_mut());
        let started = !wanted.is_empty();
        for key in wanted {
            if self.slots.contains_key(&key) {
                continue;
            }
            self.insert(key.clone(), Slot::Loading);
            let picker = self.picker.clone();
            let tx = self.tx.clone();
            let remote = self.remote.clone();
            tokio::task::spawn_blocking(move || {
                let result = encode(&picker, &key, remote.as_deref()).map_err(|e| e.to_string());
                let _ = tx.send((key, result));
            });
        }
        started
    }

    /// Decode what the last frame wanted right here (tests, where no runtime runs).
    pub fn load_wanted_now(&mut self) {
        let wanted = std::mem::take(&mut *self.wanted.borrow_mut());
        for key in wanted {
            let slot = match encode(&self.picker, &key, self.remote.as_deref()) {
                Ok(p) => Slot::Ready(p),
                Err(e) => Slot::Failed(e.to_string()),
            };
            self.insert(key, slot);
        }
    }

    /// Take finished decodes; true if any arrived (the screen should be redrawn).
    pub fn poll(&mut self) -> bool {
        let mut any = false;
        while let Ok((key, result)) = self.rx.try_recv() {
            any = true;
            let slot = match result {
                Ok(p) => Slot::Ready(p),
                Err(e) => Slot::Failed(e),
            };
            self.slots.insert(key, slot);
        }
        any
    }

    /// Wait for the next finished decode (the event loop selects on it).
    pub async fn next_ready(&mut self) -> Option<()> {
        let (key, result) = self.rx.recv().await?;
        let slot = match result {
            Ok(p) => Slot::Ready(p),
            Err(e) => Slot::Failed(e),
        };
        self.slots.insert(key, slot);
        Some(())
    }

    fn insert(&mut self, key: ImageKey, slot: Slot) {
        if self.order.len() >= CACHE_CAP {
            let old = self.order.remove(0);
            self.slots.remove(&old);
        }
        self.order.push(key.clone());
        self.slots.insert(key, slot);
    }
}

/// Read and decode an image file; SVGs are rasterised with resvg.
pub fn decode(path: &Path) -> Result<DynamicImage, ImageError> {
    let read_err = |source| ImageError::Read {
        path: path.display().to_string(),
        source,
    };
    let is_svg = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("svg") || e.eq_ignore_ascii_case("svgz"));
    if is_svg {
        let data = std::fs::read(path).map_err(read_err)?;
        return rasterise_svg(&data);
    }
    let reader = image::ImageReader::open(path)
        .map_err(read_err)?
        .with_guessed_format()
        .map_err(read_err)?;
    Ok(reader.decode()?)
}

fn rasterise_svg(data: &[u8]) -> Result<DynamicImage, ImageError> {
    use resvg::{tiny_skia, usvg};
    let tree = usvg::Tree::from_data(data, &usvg::Options::default())
        .map_err(|e| ImageError::Svg(e.to_string()))?;
    let size = tree.size();
    let scale = SVG_PIXELS / size.width().max(size.height()).max(1.0);
    let w = (size.width() * scale).ceil().max(1.0) as u32;
    let h = (size.height() * scale).ceil().max(1.0) as u32;
    let mut pixmap =
        tiny_skia::Pixmap::new(w, h).ok_or_else(|| ImageError::Svg(format!("bad size {w}x{h}")))?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    let rgba = image::RgbaImage::from_raw(w, h, pixmap.take_demultiplied())
        .ok_or_else(|| ImageError::Svg("pixel buffer size mismatch".into()))?;
    Ok(DynamicImage::ImageRgba8(rgba))
}

/// What transparent pixels are composited onto: white, like the page a stamp is drawn on, so
/// black line art on a transparent background (most Tux Paint stamps) stays visible instead of
/// turning into one black block (terminals have no alpha; transparent reads as black).
pub const BACKGROUND: [u8; 3] = [255, 255, 255];

/// The image with its transparency composited onto [`BACKGROUND`] (opaque images unchanged).
pub fn flatten(img: DynamicImage) -> DynamicImage {
    if !img.color().has_alpha() {
        return img;
    }
    let rgba = img.to_rgba8();
    let mut out = image::RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(p[3]);
        for c in 0..3 {
            let v = u32::from(p[c]) * a + u32::from(BACKGROUND[c]) * (255 - a);
            o[c] = ((v + 127) / 255) as u8;
        }
    }
    DynamicImage::ImageRgb8(out)
}

/// Decode, flatten, and encode for the terminal at the largest size that fits the cell area
/// with the aspect ratio kept: small pictures (128-px stamps) are scaled up to fill the panel,
/// large ones down (`Resize::Scale`; `Fit` would leave a 128-px stamp at a few cells).
fn encode(
    picker: &Picker,
    key: &ImageKey,
    remote: Option<&Remote>,
) -> Result<Protocol, ImageError> {
    let img = match (decode(Path::new(&key.path)), remote) {
        (Err(ImageError::Read { .. }), Some(r)) => {
            // Not readable here: the daemon's machine has it. Ask for the cell box in pixels.
            let fs = picker.font_size();
            let w = (u32::from(key.width) * u32::from(fs.width.max(1))).clamp(1, 1024);
            let h = (u32::from(key.height) * u32::from(fs.height.max(1))).clamp(1, 1024);
            r.fetch(&key.path, w, h).map_err(ImageError::Remote)?
        }
        (r, _) => r?,
    };
    let img = flatten(img);
    picker
        .new_protocol(
            img,
            Size::new(key.width, key.height),
            Resize::Scale(Some(FilterType::Triangle)),
        )
        .map_err(|e| ImageError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_corrupt_files_are_typed_errors_not_panics() {
        let dir = std::env::temp_dir().join(format!("sotalign-tui-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("nope.png");
        assert!(matches!(decode(&missing), Err(ImageError::Read { .. })));
        let corrupt = dir.join("corrupt.png");
        std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
        assert!(matches!(decode(&corrupt), Err(ImageError::Decode(_))));
        let bad_svg = dir.join("bad.svg");
        std::fs::write(&bad_svg, b"<svg this is broken").unwrap();
        assert!(matches!(decode(&bad_svg), Err(ImageError::Svg(_))));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn svg_is_rasterised_with_its_colours() {
        let dir = std::env::temp_dir().join(format!("sotalign-tui-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("red.svg");
        std::fs::write(
            &p,
            br##"<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10"><rect width="20" height="10" fill="#ff0000"/></svg>"##,
        )
        .unwrap();
        let img = decode(&p).unwrap().to_rgba8();
        // 2:1 aspect kept, longer side scaled to SVG_PIXELS.
        assert_eq!(img.width(), 512);
        assert_eq!(img.height(), 256);
        assert_eq!(img.get_pixel(100, 100).0, [255, 0, 0, 255]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn transparency_is_composited_onto_white() {
        let mut img = image::RgbaImage::new(3, 1);
        img.put_pixel(0, 0, image::Rgba([0, 0, 0, 0])); // transparent
        img.put_pixel(1, 0, image::Rgba([0, 0, 0, 255])); // a black line
        img.put_pixel(2, 0, image::Rgba([255, 0, 0, 128])); // half-transparent red
        let flat = flatten(DynamicImage::ImageRgba8(img)).to_rgb8();
        assert_eq!(flat.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(flat.get_pixel(1, 0).0, [0, 0, 0]);
        assert_eq!(flat.get_pixel(2, 0).0, [255, 127, 127]);
    }

    /// A Tux Paint-like stamp: black line art (a frame and a diagonal) on a transparent
    /// background, `px` pixels square.
    fn line_art(path: &Path, px: u32) {
        let mut img = image::RgbaImage::from_pixel(px, px, image::Rgba([0, 0, 0, 0]));
        let black = image::Rgba([0, 0, 0, 255]);
        for i in 0..px {
            for t in 0..3 {
                img.put_pixel(i, t, black);
                img.put_pixel(i, px - 1 - t, black);
                img.put_pixel(t, i, black);
                img.put_pixel(px - 1 - t, i, black);
                img.put_pixel(i, (i + t).min(px - 1), black);
            }
        }
        img.save(path).unwrap();
    }

    /// Issue 12: line-art stamps rendered as one black block, and 128-px stamps at 8x4 cells
    /// inside a 65x40 panel. Rendered with half-blocks as in tmux: the picture fills the panel
    /// along one side (aspect kept), and most of it is the light background, with the lines
    /// dark.
    #[test]
    fn a_small_line_art_stamp_fills_the_panel_and_shows_its_lines() {
        use ratatui::buffer::Buffer;
        use ratatui::layout::Rect;
        use ratatui::style::Color;
        use ratatui::widgets::Widget;

        let dir = std::env::temp_dir().join(format!("sotalign-tui-art-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("asl_zzz_4.png");
        line_art(&p, 128);
        let path = p.to_string_lossy().into_owned();
        let mut images = Images::new(Picker::halfblocks());
        let panel = Size::new(65, 40);
        assert!(images.get(&path, panel).is_none());
        images.load_wanted_now();
        let Some(Slot::Ready(proto)) = images.get(&path, panel) else {
            panic!("the stamp did not decode");
        };
        let size = proto.size();
        assert!(size.width <= 65 && size.height <= 40, "{size:?}");
        assert!(
            size.width >= 64 || size.height >= 39,
            "a 128-px stamp must be scaled up to fill the 65x40 panel, got {size:?}"
        );
        let area = Rect::new(0, 0, size.width, size.height);
        let mut buf = Buffer::empty(area);
        ratatui_image::Image::new(proto).render(area, &mut buf);
        let luma = |c: Color| match c {
            Color::Rgb(r, g, b) => Some((u32::from(r) + u32::from(g) + u32::from(b)) / 3),
            _ => None,
        };
        let (mut light, mut dark, mut all) = (0, 0, 0);
        for cell in buf.content() {
            for c in [cell.fg, cell.bg] {
                if let Some(l) = luma(c) {
                    all += 1;
                    if l > 200 {
                        light += 1;
                    } else if l < 60 {
                        dark += 1;
                    }
                }
            }
        }
        assert!(all > 0, "no coloured cells drawn");
        assert!(
            light * 10 > all * 6,
            "the transparent background must read light: {light} light of {all}"
        );
        assert!(dark > 0, "the black lines must stay visible");
        std::fs::remove_dir_all(&dir).ok();
    }
}
