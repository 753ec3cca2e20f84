//! Where a reviewer command's results go: standard output, output files and a progress bar.
//! These belong to the reviewer. Offline, a command writes to a [`LocalConsole`]. Through the
//! agent's API, the command runs in the agent (sled allows one process) and writes to a
//! [`FrameConsole`]. The FrameConsole streams each operation over the socket as a frame, and
//! the client applies the frames to its own `LocalConsole` ([`apply_frames`]). So `-o FILE`
//! and `--rotate-dir` are paths of the client, relative to its working directory; the
//! progress bar is drawn in the client's terminal; and the agent never holds a whole
//! output in memory.
//!
//! Frame: one kind byte, a 4-byte big-endian length, then the payload.

use anyhow::{Context, bail};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Reports `(done, total)` events of a long export.
pub type Progress = Box<dyn FnMut(u64, u64) + Send>;

pub trait Console {
    /// Standard output.
    fn out(&mut self) -> &mut dyn Write;
    /// Start writing `path` atomically: a temp file beside it until [`Console::commit`].
    /// `make_dirs` creates missing parent directories.
    fn create(&mut self, path: &Path, make_dirs: bool) -> anyhow::Result<()>;
    /// The file started by [`Console::create`].
    fn file(&mut self) -> anyhow::Result<&mut dyn Write>;
    /// fsync the file and rename it into place.
    fn commit(&mut self) -> anyhow::Result<()>;
    /// A progress reporter for one export.
    fn progress(&mut self) -> Progress;
}

/// The reviewer's own terminal and files.
pub struct LocalConsole<W: Write> {
    out: W,
    file: Option<(std::io::BufWriter<tempfile::NamedTempFile>, PathBuf)>,
    bar: Option<indicatif::ProgressBar>,
    show_progress: bool,
}

impl<W: Write> LocalConsole<W> {
    /// `show_progress`: draw a bar for long exports when standard error is a terminal.
    pub fn new(out: W, show_progress: bool) -> Self {
        LocalConsole {
            out,
            file: None,
            bar: None,
            show_progress,
        }
    }

    /// Flush standard output and clear the progress bar. A file not committed is removed.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.file = None;
        self.out.flush()
    }
}

impl<W: Write> Drop for LocalConsole<W> {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl<W: Write> Console for LocalConsole<W> {
    fn out(&mut self) -> &mut dyn Write {
        &mut self.out
    }

    fn create(&mut self, path: &Path, make_dirs: bool) -> anyhow::Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if make_dirs {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempfile_in(dir)
            .with_context(|| format!("create a file in {}", dir.display()))?;
        self.file = Some((std::io::BufWriter::new(tmp), path.to_path_buf()));
        Ok(())
    }

    fn file(&mut self) -> anyhow::Result<&mut dyn Write> {
        match &mut self.file {
            Some((w, _)) => Ok(w),
            None => bail!("no output file was started"),
        }
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        let Some((w, path)) = self.file.take() else {
            bail!("no output file was started");
        };
        let tmp = w.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .with_context(|| format!("rename into {}", path.display()))?;
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn progress(&mut self) -> Progress {
        if !self.show_progress || !std::io::stderr().is_terminal() {
            return Box::new(|_, _| {});
        }
        let pb = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {pos}/{len} events [{elapsed_precise}] {wide_bar} {per_sec}",
        ) {
            pb.set_style(style);
        }
        self.bar = Some(pb.clone());
        Box::new(move |done, total| {
            pb.set_length(total.max(done));
            pb.set_position(done);
        })
    }
}

mod kind {
    pub const OUT: u8 = b'o';
    pub const CREATE: u8 = b'c';
    pub const FILE: u8 = b'f';
    pub const COMMIT: u8 = b'm';
    pub const PROGRESS: u8 = b'p';
    pub const ERROR: u8 = b'e';
    pub const OK: u8 = b'k';
}

/// Data is sent in frames of up to this many bytes: the agent holds no more per command.
const FRAME_BYTES: usize = 64 << 10;

fn write_frame(w: &mut dyn Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head)?;
    w.write_all(payload)
}

type Shared = Arc<Mutex<Box<dyn Write + Send>>>;

fn send(sock: &Shared, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut s = sock.lock().unwrap_or_else(|e| e.into_inner());
    write_frame(&mut **s, kind, payload)?;
    if kind != kind::OUT && kind != kind::FILE {
        s.flush()?;
    }
    Ok(())
}

/// Buffers output or file bytes into frames of one kind.
struct FrameData {
    sock: Shared,
    kind: u8,
    buf: Vec<u8>,
}

impl FrameData {
    fn send_buffered(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            send(&self.sock, self.kind, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Write for FrameData {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= FRAME_BYTES {
            self.send_buffered()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffered()?;
        let mut s = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        s.flush()
    }
}

/// The agent's side of a command run for a client: every operation becomes a frame.
pub struct FrameConsole {
    data: FrameData,
    creating: bool,
}

impl FrameConsole {
    pub fn new(sock: Box<dyn Write + Send>) -> Self {
        FrameConsole {
            data: FrameData {
                sock: Arc::new(Mutex::new(sock)),
                kind: kind::OUT,
                buf: Vec::with_capacity(FRAME_BYTES),
            },
            creating: false,
        }
    }

    fn switch(&mut self, kind: u8) -> std::io::Result<()> {
        if self.data.kind != kind {
            self.data.send_buffered()?;
            self.data.kind = kind;
        }
        Ok(())
    }

    /// The last frame: success, or the command's error.
    pub fn end(mut self, result: &anyhow::Result<()>) -> std::io::Result<()> {
        self.data.send_buffered()?;
        match result {
            Ok(()) => send(&self.data.sock, kind::OK, b""),
            Err(e) => send(&self.data.sock, kind::ERROR, format!("{e:#}").as_bytes()),
        }
    }
}

impl Console for FrameConsole {
    fn out(&mut self) -> &mut dyn Write {
        // An error surfaces on the next write through the same buffer.
        let _ = self.switch(kind::OUT);
        &mut self.data
    }

    fn create(&mut self, path: &Path, make_dirs: bool) -> anyhow::Result<()> {
        self.data.send_buffered()?;
        let msg = serde_json::json!({ "path": path, "make_dirs": make_dirs });
        send(&self.data.sock, kind::CREATE, msg.to_string().as_bytes())?;
        self.creating = true;
        Ok(())
    }

    fn file(&mut self) -> anyhow::Result<&mut dyn Write> {
        if !self.creating {
            bail!("no output file was started");
        }
        self.switch(kind::FILE)?;
        Ok(&mut self.data)
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        self.data.send_buffered()?;
        self.creating = false;
        send(&self.data.sock, kind::COMMIT, b"")?;
        Ok(())
    }

    fn progress(&mut self) -> Progress {
        let sock = self.data.sock.clone();
        Box::new(move |done, total| {
            let mut p = [0u8; 16];
            p[..8].copy_from_slice(&done.to_be_bytes());
            p[8..].copy_from_slice(&total.to_be_bytes());
            let _ = send(&sock, kind::PROGRESS, &p);
        })
    }
}

/// The client's side: apply the frames an agent sends to the reviewer's own console. Returns
/// the command's error when the agent reports one, or when the stream ends early.
pub fn apply_frames<W: Write>(
    mut r: impl Read,
    console: &mut LocalConsole<W>,
) -> anyhow::Result<()> {
    let mut progress: Option<Progress> = None;
    let mut head = [0u8; 5];
    let mut buf = Vec::new();
    loop {
        if let Err(e) = r.read_exact(&mut head) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bail!("the agent closed the connection before the command finished");
            }
            return Err(e).context("read from the agent");
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > 16 * FRAME_BYTES {
            bail!("malformed answer from the agent (frame of {len} bytes)");
        }
        buf.resize(len, 0);
        r.read_exact(&mut buf)
            .context("the agent's answer was cut short")?;
        match head[0] {
            kind::OUT => console.out().write_all(&buf)?,
            kind::FILE => console.file()?.write_all(&buf)?,
            kind::CREATE => {
                #[derive(serde::Deserialize)]
                struct Create {
                    path: PathBuf,
                    make_dirs: bool,
                }
                let c: Create = serde_json::from_slice(&buf).context("create frame")?;
                console.create(&c.path, c.make_dirs)?;
            }
            kind::COMMIT => console.commit()?,
            kind::PROGRESS if len == 16 => {
                let done = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
                let total = u64::from_be_bytes(buf[8..].try_into().unwrap_or_default());
                progress.get_or_insert_with(|| console.progress())(done, total);
            }
            kind::ERROR => bail!("{}", String::from_utf8_lossy(&buf)),
            kind::OK => return Ok(()),
            k => bail!("malformed answer from the agent (frame kind {k})"),
        }
    }
}
