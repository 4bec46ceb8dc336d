//! Serves a 64 MiB export in RAM on the Unix socket given as the first
//! argument, one connection at a time (for trying NBD clients by hand).

use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

use lc_nbd::{Errno, Export, Exports};

struct Ram(Mutex<Vec<u8>>);

impl Export for Ram {
    fn size(&self) -> u64 {
        64 << 20
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let b = self.0.lock().unwrap();
        buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), Errno> {
        self.0.lock().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> Result<(), Errno> {
        Ok(())
    }
    fn trim(&self, _offset: u64, _len: u64) -> Result<(), Errno> {
        Ok(())
    }
    fn flush_covers_all_connections(&self) -> bool {
        true
    }
}

struct One(Arc<Ram>);

impl Exports for One {
    fn find(&self, _name: &str) -> Option<Arc<dyn Export>> {
        Some(self.0.clone())
    }
    fn names(&self) -> Vec<String> {
        vec!["ram".into()]
    }
}

fn main() {
    let path = std::env::args().nth(1).expect("a socket path");
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).unwrap();
    let exports = One(Arc::new(Ram(Mutex::new(vec![0; 64 << 20]))));
    for s in l.incoming() {
        let s = s.unwrap();
        let w = s.try_clone().unwrap();
        eprintln!("connection ended: {:?}", lc_nbd::serve(s, w, &exports));
    }
}
