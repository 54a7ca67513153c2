"""The records' journal: lines appended into memory-mapped segments, read back after a position."""

from appliance.core.journal import Journal


def test_lines_are_read_back_in_order_across_segments(tmp_path):
    j = Journal(tmp_path, segment_bytes=64)
    marks = [j.append(b'["row %d"]' % i) for i in range(20)]
    assert len(j.segments()) > 2 and marks[-1][0] == j.current
    assert list(j.read_from(None)) == [b'["row %d"]' % i for i in range(20)]
    assert list(j.read_from(marks[9])) == [b'["row %d"]' % i for i in range(10, 20)]
    j.release_before(marks[9])
    assert min(j.segments()) == marks[9][0]
    assert list(j.read_from(marks[9])) == [b'["row %d"]' % i for i in range(10, 20)]
    j.close()


def test_a_line_cut_by_a_kill_is_ignored_and_a_new_journal_starts_after_the_old(tmp_path):
    j = Journal(tmp_path, segment_bytes=1024)
    seg, end = j.append(b'["whole"]')
    j._mm[end:end + 5] = b'["cut'            # the copy a kill interrupted: no newline
    j.close()
    again = Journal(tmp_path, segment_bytes=1024)
    assert list(again.read_from(None)) == [b'["whole"]']
    assert again.append(b'["next"]')[0] > seg
    again.release_all()
    assert again.segments() == []


def test_a_line_longer_than_a_segment_gets_a_segment_of_its_own(tmp_path):
    j = Journal(tmp_path, segment_bytes=16)
    j.append(b"x" * 100)
    assert list(j.read_from(None)) == [b"x" * 100]
    j.close()
