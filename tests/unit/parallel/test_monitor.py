"""MemoryMonitor: RSS peaks, modelled resident bytes, timeline, summary, self-stopping duration."""
import mmap

from comfyui_parallel.parallel.monitor import MemoryMonitor


def test_peak_rss_sees_an_allocation():
    with MemoryMonitor(interval=0.01) as mon:
        before = mon.sample().rss
        # fresh anonymous pages, touched: a malloc'd buffer could reuse memory earlier tests freed
        big = mmap.mmap(-1, 64 * 1024 * 1024)
        for offset in range(0, len(big), mmap.PAGESIZE):
            big[offset] = 1
        mon.sample()
        big.close()
    assert mon.peak_rss >= before + 60 * 1024 * 1024
    assert not mon.running
    assert mon.timeline[0].t <= mon.timeline[-1].t


def test_record_resident_enters_timeline_and_summary():
    with MemoryMonitor() as mon:
        mon.record_resident(3 * 1024 ** 3)
        mon.record_resident(1024 ** 3)
    assert mon.peak_resident == 3 * 1024 ** 3
    assert [s.resident for s in mon.timeline if s.resident is not None][:2] == [3 * 1024 ** 3, 1024 ** 3]
    text = mon.summary()
    assert "peak RSS" in text and "modelled resident peak 3.00 GiB" in text and "samples" in text
    assert "\n" not in text


def test_cpu_devices_have_no_allocator_entries():
    mon = MemoryMonitor(devices=["cpu", "cpu:1"])
    assert mon.devices == [] and mon.peak_allocated == {}


def test_duration_stops_by_itself():
    mon = MemoryMonitor(interval=0.01, duration=0.05).start()
    mon.wait()
    assert not mon.running and len(mon.timeline) >= 2
    mon.stop()


def test_bad_interval_refused():
    try:
        MemoryMonitor(interval=0)
    except ValueError as err:
        assert "interval" in str(err)
    else:
        raise AssertionError("interval 0 accepted")
