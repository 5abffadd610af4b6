//! Names for a profile's addresses, from the executable's ELF symbol table: only its
//! headers, symbols and their names are read from the file, and dropped after the lookup,
//! so a profile leaves nothing resident
//! (a DWARF symbolizer keeps hundreds of MB of parsed debug information for the life of the
//! process). Functions are named without inlined frames or lines; addresses in shared
//! libraries are named by the library.

use std::collections::HashMap;

use object::{Object, ObjectSegment, ObjectSymbol};

/// One stack and how many times it was sampled.
pub struct Sample {
    pub thread: String,
    pub count: i64,
    /// Indices into [`Resolved::names`], the leaf first.
    pub stack: Vec<usize>,
}

/// The samples of a profile with their function names.
pub struct Resolved {
    pub names: Vec<String>,
    pub samples: Vec<Sample>,
}

/// One line of `/proc/self/maps`: an address range, its offset in the file, the file.
struct Mapping {
    start: usize,
    end: usize,
    offset: usize,
    path: String,
}

fn mappings() -> Vec<Mapping> {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, _perms, offset) = (f.next()?, f.next()?, f.next()?);
            let path = f.nth(2).unwrap_or("").to_string();
            let (a, b) = range.split_once('-')?;
            Some(Mapping {
                start: usize::from_str_radix(a, 16).ok()?,
                end: usize::from_str_radix(b, 16).ok()?,
                offset: usize::from_str_radix(offset, 16).ok()?,
                path,
            })
        })
        .collect()
}

/// The executable's function symbols, sorted by address, and how far it was loaded from
/// its link addresses.
struct Executable<'a> {
    file: object::File<'a, &'a object::ReadCache<std::fs::File>>,
    bias: usize,
    /// (address, size, index in the symbol table) — or, for a stripped executable, in the
    /// dynamic symbol table, whose names are kept (few).
    functions: Vec<(u64, u64, Option<object::SymbolIndex>, Option<String>)>,
}

impl<'a> Executable<'a> {
    fn parse(
        data: &'a object::ReadCache<std::fs::File>,
        maps: &[Mapping],
        path: &str,
    ) -> Option<Executable<'a>> {
        let file = object::File::parse(data).ok()?;
        // A position-independent executable: the mapping of the file's start holds the
        // segment that starts the file.
        let bias = if file.kind() == object::ObjectKind::Dynamic {
            let first = maps.iter().find(|m| m.path == path && m.offset == 0)?;
            let vaddr = file
                .segments()
                .find(|s| s.file_range().0 == 0)
                .map_or(0, |s| s.address());
            first.start.checked_sub(vaddr as usize)?
        } else {
            0
        };
        let mut functions: Vec<_> = file
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
            .map(|s| (s.address(), s.size(), Some(s.index()), None))
            .collect();
        if functions.is_empty() {
            functions = file
                .dynamic_symbols()
                .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
                .map(|s| {
                    (
                        s.address(),
                        s.size(),
                        None,
                        s.name().ok().map(str::to_string),
                    )
                })
                .collect();
        }
        functions.sort_unstable_by_key(|f| f.0);
        Some(Executable {
            file,
            bias,
            functions,
        })
    }

    fn name(&self, ip: usize) -> Option<String> {
        let vaddr = ip.checked_sub(self.bias)? as u64;
        let i = self
            .functions
            .partition_point(|f| f.0 <= vaddr)
            .checked_sub(1)?;
        let (start, size, index, name) = &self.functions[i];
        if *size != 0 && vaddr >= start.saturating_add(*size) {
            return None;
        }
        let name = match (index, name) {
            (Some(index), _) => self.file.symbol_by_index(*index).ok()?.name().ok()?,
            (None, Some(name)) => name.as_str(),
            (None, None) => return None,
        };
        Some(format!("{:#}", rustc_demangle::demangle(name)))
    }
}

/// Gives each address a name's index, the same index to the same name.
struct Namer<'a> {
    maps: &'a [Mapping],
    exe: &'a str,
    executable: Option<Executable<'a>>,
    names: Vec<String>,
    by_name: HashMap<String, usize>,
    by_ip: HashMap<usize, usize>,
}

impl Namer<'_> {
    fn name(&mut self, ip: usize) -> usize {
        if let Some(&i) = self.by_ip.get(&ip) {
            return i;
        }
        let exe = self.exe;
        let in_exe = self
            .maps
            .iter()
            .any(|m| m.path == exe && (m.start..m.end).contains(&ip));
        let name = match self.executable.as_ref().filter(|_| in_exe) {
            Some(e) => e
                .name(ip)
                .unwrap_or_else(|| format!("[{}+{:#x}]", short(exe), ip.wrapping_sub(e.bias))),
            None => match self.maps.iter().find(|m| (m.start..m.end).contains(&ip)) {
                Some(m) if !m.path.is_empty() => format!("[{}]", short(&m.path)),
                _ => "[unknown]".to_string(),
            },
        };
        let next = self.names.len();
        let names = &mut self.names;
        let i = *self.by_name.entry(name.clone()).or_insert_with(|| {
            names.push(name);
            next
        });
        self.by_ip.insert(ip, i);
        i
    }
}

/// Names every frame of the sampled stacks, with their threads' names, and groups equal
/// stacks.
pub fn resolve(stacks: &[crate::sampler::Stack]) -> Resolved {
    let maps = mappings();
    // A binary replaced on disk reads "<path> (deleted)" here, and its maps lines (split on
    // whitespace) "<path>".
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_string();
    // The running executable (a binary replaced on disk is a new file: this one's inode
    // stays as it was).
    let data = std::fs::File::open("/proc/self/exe")
        .ok()
        .map(object::ReadCache::new);
    let mut namer = Namer {
        maps: &maps,
        exe: &exe,
        executable: data
            .as_ref()
            .and_then(|d| Executable::parse(d, &maps, &exe)),
        names: Vec::new(),
        by_name: HashMap::new(),
        by_ip: HashMap::new(),
    };
    let mut threads: HashMap<i32, String> = HashMap::new();
    let mut grouped: HashMap<(String, Vec<usize>), i64> = HashMap::new();
    for s in stacks {
        let stack: Vec<usize> = s
            .ips
            .iter()
            .enumerate()
            // The interrupted instruction is exact; a return address points after its
            // call, so the call itself is looked up.
            .map(|(i, &ip)| namer.name(if i == 0 { ip } else { ip.saturating_sub(1) }))
            .collect();
        let thread = threads
            .entry(s.tid)
            .or_insert_with(|| {
                std::fs::read_to_string(format!("/proc/self/task/{}/comm", s.tid))
                    .map(|n| n.trim_end().to_string())
                    .unwrap_or_else(|_| format!("thread {}", s.tid))
            })
            .clone();
        *grouped.entry((thread, stack)).or_insert(0) += 1;
    }
    let samples = grouped
        .into_iter()
        .map(|((thread, stack), count)| Sample {
            thread,
            count,
            stack,
        })
        .collect();
    Resolved {
        names: namer.names,
        samples,
    }
}

fn short(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
