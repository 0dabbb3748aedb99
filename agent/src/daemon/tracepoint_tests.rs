//! Unit tests of `daemon/tracepoint.rs`.
use super::*;

const FORMAT: &str = "name: inet_sock_set_state\n\
    \tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
    \tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\
    \tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;\n\
    \tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\
    \tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;\n\
    \tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n\
    \tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n";

#[test]
fn the_format_of_this_kernel_generation_is_accepted() {
    check_format(FORMAT, &EXPECTED).unwrap();
}

#[test]
fn a_moved_field_is_refused() {
    let moved = FORMAT.replace("offset:24", "offset:32");
    assert!(check_format(&moved, &EXPECTED).unwrap_err().to_string().contains("sport"));
    assert!(check_format("name: x\n", &EXPECTED).is_err());
}

const NEWTASK: &str = "name: task_newtask\n\
    \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
    \tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;\n\
    \tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;\n\
    \tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;\n";

#[test]
fn the_fork_tracepoint_format_is_checked_by_field_name() {
    check_format(NEWTASK, &EXPECTED_FORK).unwrap();
    let moved = NEWTASK.replace("offset:32", "offset:40");
    assert!(check_format(&moved, &EXPECTED_FORK).unwrap_err().to_string().contains("clone_flags"));
}

/// The namespace filter is on only for a list the map holds, of inodes the
/// kernel's `u32` can name; otherwise every namespace is reported.
#[test]
fn the_netns_filter_is_on_only_for_a_list_it_can_hold() {
    assert_eq!(netns_filter(&[]), 0, "--netns all");
    assert_eq!(netns_filter(&[4_026_531_840]), 1);
    assert_eq!(netns_filter(&[u64::from(u32::MAX) + 1]), 0);
    let many: Vec<u64> = (0..=u64::from(watch::NETNS_MAX)).collect();
    assert_eq!(netns_filter(&many), 0);
}
