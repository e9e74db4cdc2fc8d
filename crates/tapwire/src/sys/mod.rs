//! The raw system calls the daemon needs, behind safe wrappers; the only home of `unsafe`
//! outside the modules that own a kernel interface outright (TAP, seccomp listener).
#![allow(unsafe_code)]

pub mod fd;

#[cfg(test)]
mod tests {
    use tapwire_proto::linux;

    #[test]
    fn proto_linux_numbers_match_libc() {
        assert_eq!(linux::EINVAL, libc::EINVAL);
        assert_eq!(linux::ENETUNREACH, libc::ENETUNREACH);
        assert_eq!(linux::ECONNREFUSED, libc::ECONNREFUSED);
        assert_eq!(linux::EHOSTUNREACH, libc::EHOSTUNREACH);
        assert_eq!(linux::EAFNOSUPPORT, libc::EAFNOSUPPORT);
        assert_eq!(linux::AF_UNSPEC, libc::AF_UNSPEC);
        assert_eq!(linux::AF_UNIX, libc::AF_UNIX);
        assert_eq!(linux::AF_INET, libc::AF_INET);
        assert_eq!(linux::AF_INET6, libc::AF_INET6);
    }
}
