//! The offline store: each party's offline material streamed to one file per
//! node (`--store DIR`) and read back node by node online, so that a party's
//! memory holds one node's material at a time (ResNet-18 on Tiny-ImageNet
//! has 2.2 M ReLUs, about 16 GB of garbled tables on the client).
//!
//! Layout: `DIR/pibench-store.json` names the model (public hash) the
//! folder belongs to; a folder of another model is refused. Each session
//! works in its own subfolder `DIR/<role>-<pid>-<n>/`, removed when the
//! session ends (also on errors); subfolders of processes that no longer
//! exist are removed when a store is opened. A node file
//! `i<inference>-n<node>.bin` is written to a temporary name and renamed
//! when complete; it starts with a header (magic `PIST`, format version,
//! model hash, role, inference, node) and ends with the trailer `DONE`.
//! Reading derives every length from the protocol plan and checks the
//! header, every field element and the trailer, so a half-written, foreign
//! or corrupted file is an error naming the file and the byte offset.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::gc::engine::CircuitShape;
use crate::gc::protocol::{EvaluatorSite, GarblerSite, StorePool, StoreReader};
use crate::he::poly::{ClientPolyShares, ServerPolyShares};

use super::plan::{InferencePlan, Step};
use super::public::{hex, PublicModel};
use super::report::Role;
use super::InferenceError;

const MAGIC: &[u8; 4] = b"PIST";
const TRAILER: &[u8; 4] = b"DONE";
/// Store format version: 2 since GC sites are stored piece by piece.
const VERSION: u32 = 2;
const MANIFEST: &str = "pibench-store.json";

static SESSIONS: AtomicU64 = AtomicU64::new(0);

/// The server's material of one node.
#[derive(Debug, Default)]
pub struct ServerNode {
    /// HE share `s` (linear nodes).
    pub he: Option<Vec<u64>>,
    /// Garbled groups, in plan order.
    pub gc: Vec<GarblerSite>,
    /// Polynomial material.
    pub poly: Option<ServerPolyShares>,
}

/// The client's material of one node.
#[derive(Debug, Default)]
pub struct ClientNode {
    /// Garbled groups, in plan order.
    pub gc: Vec<EvaluatorSite>,
    /// Fresh masks per group.
    pub masks: Vec<Vec<u64>>,
    /// Polynomial material.
    pub poly: Option<ClientPolyShares>,
    /// Masks of the polynomial values.
    pub poly_rv: Option<Vec<u64>>,
}

/// One session's folder.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    hash: [u8; 32],
    role: Role,
    pool: StorePool,
}

/// `MemAvailable` of `/proc/meminfo` in bytes (`None` where unknown).
pub fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes of used buffers a store keeps for its next reads (about one
/// ResNet-18 Tiny-ImageNet layer-1 site of garbled tables on the client).
const POOL_LIMIT: usize = 2 << 30;

/// What one node's file holds, derived from the protocol plan; owned, so
/// that a read can run on a blocking thread ahead of the node.
#[derive(Debug, Clone)]
pub struct NodeLayout {
    node: usize,
    he_len: usize,
    groups: Vec<(CircuitShape, usize)>,
    n_poly: usize,
}

impl NodeLayout {
    /// The layout of `node` in `plan`.
    pub fn new(plan: &InferencePlan, node: usize) -> Result<Self, InferenceError> {
        Ok(Self {
            node,
            he_len: plan.net.nodes[node].shape.len(),
            groups: plan
                .gc_groups(node)?
                .into_iter()
                .map(|(g, _)| (g.shape, g.count))
                .collect(),
            n_poly: poly_len(plan, node),
        })
    }
}

/// One party's stored material of a node.
pub trait StoredNode: Sized + Send + 'static {
    /// Whether node `i` has material of this party in the store.
    fn has_material(plan: &InferencePlan, i: usize) -> Result<bool, InferenceError>;
    /// Reads the node `layout` describes.
    fn read(st: &Store, layout: &NodeLayout, inference: usize) -> Result<Self, InferenceError>;
}

impl StoredNode for ServerNode {
    /// Linear layers (HE shares), garbled groups and polynomial elements.
    fn has_material(plan: &InferencePlan, i: usize) -> Result<bool, InferenceError> {
        Ok(matches!(
            plan.steps[i],
            Step::Conv { .. } | Step::Fc { .. } | Step::BatchNorm { .. }
        ) || !plan.gc_groups(i)?.is_empty()
            || poly_len(plan, i) > 0)
    }

    fn read(st: &Store, layout: &NodeLayout, inference: usize) -> Result<Self, InferenceError> {
        st.read_server_layout(layout, inference)
    }
}

impl StoredNode for ClientNode {
    /// Garbled groups and polynomial elements.
    fn has_material(plan: &InferencePlan, i: usize) -> Result<bool, InferenceError> {
        Ok(!plan.gc_groups(i)?.is_empty() || poly_len(plan, i) > 0)
    }

    fn read(st: &Store, layout: &NodeLayout, inference: usize) -> Result<Self, InferenceError> {
        st.read_client_layout(layout, inference)
    }
}

/// A node read on a blocking thread while the party works on earlier nodes
/// (or already read: [`Store::preload`]).
#[derive(Debug)]
pub struct ReadAhead<T> {
    node: usize,
    state: AheadState<T>,
}

#[derive(Debug)]
enum AheadState<T> {
    Running(tokio::task::JoinHandle<Result<(T, f64), InferenceError>>),
    Done(Result<(T, f64), InferenceError>),
}

impl<T> ReadAhead<T> {
    /// The node being read.
    pub fn node(&self) -> usize {
        self.node
    }

    /// Waits for the read; returns the node and the seconds the read took.
    pub async fn wait(self) -> Result<(T, f64), InferenceError> {
        let node = self.node;
        match self.state {
            AheadState::Done(r) => r,
            AheadState::Running(task) => task.await.map_err(|e| InferenceError::Store {
                path: format!("node {node}"),
                reason: format!("the read-ahead thread failed: {e}"),
            })?,
        }
    }

    /// Waits for the read to finish, keeping its result for [`ReadAhead::wait`].
    async fn finish(self) -> Self {
        let node = self.node;
        let r = self.wait().await;
        Self {
            node,
            state: AheadState::Done(r),
        }
    }
}

fn store_err(path: &Path, reason: impl Into<String>) -> InferenceError {
    InferenceError::Store {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    model: String,
    model_hash: String,
}

impl Store {
    /// Opens (creating) the store folder `base` for `public`, and a fresh session subfolder.
    pub fn open(base: &Path, public: &PublicModel, role: Role) -> Result<Self, InferenceError> {
        std::fs::create_dir_all(base)
            .map_err(|e| store_err(base, format!("cannot create the folder: {e}")))?;
        let manifest = base.join(MANIFEST);
        let hash = public.hash();
        match std::fs::read(&manifest) {
            Ok(bytes) => {
                let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                    store_err(&manifest, format!("not a pibench store manifest: {e}"))
                })?;
                if m.model_hash != hex(&hash) {
                    return Err(store_err(
                        base,
                        format!(
                            "belongs to model {} (hash {}…); this session runs {} (hash {}…): use another folder",
                            m.model,
                            &m.model_hash[..m.model_hash.len().min(16)],
                            public.name,
                            &hex(&hash)[..16]
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let m = Manifest {
                    model: public.name.clone(),
                    model_hash: hex(&hash),
                };
                let bytes = serde_json::to_vec_pretty(&m).unwrap_or_default();
                std::fs::write(&manifest, bytes)
                    .map_err(|e| store_err(&manifest, format!("cannot write: {e}")))?;
            }
            Err(e) => return Err(store_err(&manifest, format!("cannot read: {e}"))),
        }
        remove_stale(base);
        let tag = match role {
            Role::Server => "server",
            Role::Client => "client",
        };
        let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{tag}-{}-{n}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| store_err(&dir, format!("cannot clear: {e}")))?;
        }
        std::fs::create_dir(&dir).map_err(|e| store_err(&dir, format!("cannot create: {e}")))?;
        Ok(Self {
            dir,
            hash,
            role,
            pool: StorePool::new(POOL_LIMIT),
        })
    }

    /// The session's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Buffers of nodes already used, for the next reads: give a node's
    /// sites back with `recycle` once its online step is done.
    pub fn pool(&self) -> &StorePool {
        &self.pool
    }

    /// Starts reading node `node`'s material on a blocking thread (the file
    /// is removed once read).
    pub fn read_ahead<T: StoredNode>(
        self: &std::sync::Arc<Self>,
        plan: &InferencePlan,
        inference: usize,
        node: usize,
    ) -> Result<ReadAhead<T>, InferenceError> {
        let layout = NodeLayout::new(plan, node)?;
        let st = self.clone();
        Ok(ReadAhead {
            node,
            state: AheadState::Running(tokio::task::spawn_blocking(move || {
                let t = std::time::Instant::now();
                let m = T::read(&st, &layout, inference)?;
                st.remove(inference, node);
                Ok((m, t.elapsed().as_secs_f64()))
            })),
        })
    }

    /// Reads the first node that has material back into memory and waits for
    /// it: called as the offline phase ends, so that the online phase starts,
    /// as it would without a store, with the first layer's material at hand
    /// (the read's time counts as offline; the node's `store_read_s` still
    /// reports it, with no wait). The later nodes are read while earlier ones
    /// run, as before.
    pub async fn preload<T: StoredNode>(
        self: &std::sync::Arc<Self>,
        plan: &InferencePlan,
        inference: usize,
    ) -> Result<Option<ReadAhead<T>>, InferenceError> {
        let mut ahead = None;
        self.start_ahead(&mut ahead, plan, inference, 0)?;
        Ok(match ahead {
            Some(a) => Some(a.finish().await),
            None => None,
        })
    }

    /// Node `i`'s material in the online phase: from `ahead` when that read
    /// is for node `i`, else read now; then starts reading the next node
    /// that has material. Returns the material, the seconds its read took
    /// and the seconds this call waited.
    pub async fn take<T: StoredNode>(
        self: &std::sync::Arc<Self>,
        ahead: &mut Option<ReadAhead<T>>,
        plan: &InferencePlan,
        inference: usize,
        i: usize,
    ) -> Result<(T, f64, f64), InferenceError> {
        let waited = std::time::Instant::now();
        let (m, read_s) = match ahead.take() {
            Some(a) if a.node() == i => a.wait().await?,
            other => {
                *ahead = other;
                let m = T::read(self, &NodeLayout::new(plan, i)?, inference)?;
                self.remove(inference, i);
                (m, waited.elapsed().as_secs_f64())
            }
        };
        let wait_s = waited.elapsed().as_secs_f64();
        self.start_ahead(ahead, plan, inference, i + 1)?;
        Ok((m, read_s, wait_s))
    }

    /// Starts reading the first node at or after `from` that has material
    /// into `ahead` (nothing when there is none).
    pub fn start_ahead<T: StoredNode>(
        self: &std::sync::Arc<Self>,
        ahead: &mut Option<ReadAhead<T>>,
        plan: &InferencePlan,
        inference: usize,
        from: usize,
    ) -> Result<(), InferenceError> {
        for j in from..plan.steps.len() {
            if T::has_material(plan, j)? {
                *ahead = Some(self.read_ahead(plan, inference, j)?);
                break;
            }
        }
        Ok(())
    }

    fn path(&self, inference: usize, node: usize) -> PathBuf {
        self.dir.join(format!("i{inference}-n{node:05}.bin"))
    }

    fn header(&self, inference: usize, node: usize) -> Vec<u8> {
        let mut h = Vec::with_capacity(49);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&self.hash);
        h.push(self.role as u8);
        h.extend_from_slice(&(inference as u32).to_le_bytes());
        h.extend_from_slice(&(node as u32).to_le_bytes());
        h
    }

    fn write(
        &self,
        inference: usize,
        node: usize,
        body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
    ) -> Result<(), InferenceError> {
        let path = self.path(inference, node);
        let tmp = path.with_extension("tmp");
        let io = |e: std::io::Error| store_err(&tmp, format!("cannot write: {e}"));
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io)?);
        w.write_all(&self.header(inference, node)).map_err(io)?;
        body(&mut w).map_err(io)?;
        w.write_all(TRAILER).map_err(io)?;
        w.flush().map_err(io)?;
        drop(w);
        std::fs::rename(&tmp, &path).map_err(|e| store_err(&path, format!("cannot rename: {e}")))
    }

    fn open_node(
        &self,
        inference: usize,
        node: usize,
    ) -> Result<(StoreReader<BufReader<File>>, PathBuf), InferenceError> {
        let path = self.path(inference, node);
        let f = File::open(&path).map_err(|e| {
            store_err(
                &path,
                format!("missing (offline phase incomplete or folder changed): {e}"),
            )
        })?;
        let mut r = StoreReader::new(
            BufReader::with_capacity(1 << 20, f),
            path.display().to_string(),
        );
        let want = self.header(inference, node);
        let mut got = vec![0u8; want.len()];
        r.bytes(&mut got, "header")?;
        if got[..4] != want[..4] || got[4..8] != want[4..8] {
            return Err(store_err(&path, "not a pibench store file of this version"));
        }
        if got[8..40] != want[8..40] {
            return Err(store_err(&path, "written for another model"));
        }
        if got[40..] != want[40..] {
            return Err(store_err(
                &path,
                "written for another party, inference or node",
            ));
        }
        Ok((r, path))
    }

    fn finish(mut r: StoreReader<BufReader<File>>, path: &Path) -> Result<(), InferenceError> {
        let mut t = [0u8; 4];
        r.bytes(&mut t, "trailer")?;
        if &t != TRAILER {
            return Err(store_err(
                path,
                format!("bad trailer at byte {}", r.offset() - 4),
            ));
        }
        let mut extra = [0u8; 1];
        match r_read(&mut r, &mut extra) {
            0 => Ok(()),
            _ => Err(store_err(
                path,
                format!("trailing bytes after byte {}", r.offset()),
            )),
        }
    }

    /// Writes the server's material of a node.
    pub fn write_server(
        &self,
        inference: usize,
        node: usize,
        m: &ServerNode,
    ) -> Result<(), InferenceError> {
        self.write(inference, node, |w| {
            flag_u64s(w, m.he.as_deref())?;
            for g in &m.gc {
                g.write_to(w)?;
            }
            match &m.poly {
                None => w.write_all(&[0]),
                Some(p) => {
                    w.write_all(&[1])?;
                    put(w, &p.u)?;
                    put(w, &p.e)?;
                    put(w, &p.z)
                }
            }
        })
    }

    /// Reads the server's material of a node.
    pub fn read_server(
        &self,
        plan: &InferencePlan,
        inference: usize,
        node: usize,
    ) -> Result<ServerNode, InferenceError> {
        self.read_server_layout(&NodeLayout::new(plan, node)?, inference)
    }

    /// Reads the server's material of the node `layout` describes.
    pub fn read_server_layout(
        &self,
        layout: &NodeLayout,
        inference: usize,
    ) -> Result<ServerNode, InferenceError> {
        let (mut r, path) = self.open_node(inference, layout.node)?;
        let he = read_flag_field(&mut r, layout.he_len, "HE share")?;
        let mut gc = Vec::new();
        for (shape, count) in &layout.groups {
            gc.push(GarblerSite::read_pooled(&mut r, shape, *count, &self.pool)?);
        }
        let n_poly = layout.n_poly;
        let poly = match read_flag(&mut r)? {
            false => None,
            true => Some(ServerPolyShares {
                u: r.field(n_poly, "u")?,
                e: r.field(n_poly, "e")?,
                z: r.field(n_poly, "z")?,
            }),
        };
        Self::finish(r, &path)?;
        Ok(ServerNode { he, gc, poly })
    }

    /// Writes the client's material of a node.
    pub fn write_client(
        &self,
        inference: usize,
        node: usize,
        m: &ClientNode,
    ) -> Result<(), InferenceError> {
        self.write(inference, node, |w| {
            for g in &m.gc {
                g.write_to(w)?;
            }
            for mask in &m.masks {
                put(w, mask)?;
            }
            match &m.poly {
                None => w.write_all(&[0])?,
                Some(p) => {
                    w.write_all(&[1])?;
                    put(w, &p.e)?;
                    put(w, &p.r2)?;
                }
            }
            flag_u64s(w, m.poly_rv.as_deref())
        })
    }

    /// Reads the client's material of a node.
    pub fn read_client(
        &self,
        plan: &InferencePlan,
        inference: usize,
        node: usize,
    ) -> Result<ClientNode, InferenceError> {
        self.read_client_layout(&NodeLayout::new(plan, node)?, inference)
    }

    /// Reads the client's material of the node `layout` describes.
    pub fn read_client_layout(
        &self,
        layout: &NodeLayout,
        inference: usize,
    ) -> Result<ClientNode, InferenceError> {
        let (mut r, path) = self.open_node(inference, layout.node)?;
        let mut gc = Vec::new();
        for (shape, count) in &layout.groups {
            gc.push(EvaluatorSite::read_pooled(
                &mut r, shape, *count, &self.pool,
            )?);
        }
        let mut masks = Vec::new();
        for (_, count) in &layout.groups {
            masks.push(r.field(*count, "mask")?);
        }
        let n_poly = layout.n_poly;
        let poly = match read_flag(&mut r)? {
            false => None,
            true => Some(ClientPolyShares {
                e: r.field(n_poly, "e")?,
                r2: r.field(n_poly, "r2")?,
            }),
        };
        let poly_rv = read_flag_field(&mut r, n_poly, "polynomial masks")?;
        Self::finish(r, &path)?;
        Ok(ClientNode {
            gc,
            masks,
            poly,
            poly_rv,
        })
    }

    /// Removes a node's file once read.
    pub fn remove(&self, inference: usize, node: usize) {
        let _ = std::fs::remove_file(self.path(inference, node));
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn r_read(r: &mut StoreReader<BufReader<File>>, buf: &mut [u8]) -> usize {
    // One byte past the trailer must be end of file.
    match r.bytes(buf, "end") {
        Ok(()) => 1,
        Err(_) => 0,
    }
}

fn poly_len(plan: &InferencePlan, node: usize) -> usize {
    match &plan.steps[node] {
        Step::Site(sp) => sp.poly.len(),
        _ => 0,
    }
}

fn put(w: &mut impl Write, v: &[u64]) -> std::io::Result<()> {
    for x in v {
        w.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

fn flag_u64s(w: &mut impl Write, v: Option<&[u64]>) -> std::io::Result<()> {
    match v {
        None => w.write_all(&[0]),
        Some(v) => {
            w.write_all(&[1])?;
            w.write_all(&(v.len() as u64).to_le_bytes())?;
            put(w, v)
        }
    }
}

fn read_flag<R: Read>(r: &mut StoreReader<R>) -> Result<bool, InferenceError> {
    let mut b = [0u8; 1];
    r.bytes(&mut b, "flag")?;
    match b[0] {
        0 => Ok(false),
        1 => Ok(true),
        x => Err(r.error(format!("flag byte is {x}, expected 0 or 1")).into()),
    }
}

fn read_flag_field<R: Read>(
    r: &mut StoreReader<R>,
    max: usize,
    what: &str,
) -> Result<Option<Vec<u64>>, InferenceError> {
    if !read_flag(r)? {
        return Ok(None);
    }
    let n = r.u64("length")?;
    if n > max as u64 {
        return Err(r
            .error(format!("{what}: {n} values, at most {max} expected"))
            .into());
    }
    Ok(Some(r.field(n as usize, what)?))
}

/// Removes session subfolders of processes that no longer exist.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("server-")
            .or_else(|| name.strip_prefix("client-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
