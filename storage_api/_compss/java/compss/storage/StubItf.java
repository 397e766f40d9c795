package storage;

/** Compile-time stand-in of COMPSs' storage.StubItf (exact COMPSs 3.3 API); COMPSs provides the real one. */
public interface StubItf {

    String getID();

    void makePersistent(String id);

    void deletePersistent();
}
